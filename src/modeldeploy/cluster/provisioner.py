"""A volume provisioner for the real node: claims of the `modeldeploy-local` class get a directory on this host.

Run by `modeldeploy cluster up --real-node` (python -m modeldeploy.cluster.provisioner). Each pending claim of the
class gets a `local` PersistentVolume on a new directory under the cluster's state directory, pinned to the real
node and bound to the claim; a released volume's directory and PV are deleted. The directories are world-writable
because the project's pods run as a non-root user and fsGroup does not apply to local volumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

from modeldeploy.cluster.realnode import NODE_NAME, PROVISIONER_NAME, STORAGE_CLASS

log = logging.getLogger(__name__)


class Api:
    """Just enough of the API for this loop, with the admin client certificate."""

    def __init__(self, server: str, pki: Path) -> None:
        self.server = server
        self.context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.server + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10, context=self.context) as response:
            result: dict[str, Any] = json.loads(response.read() or b"{}")
            return result


def build_volume(claim: dict[str, Any], path: Path) -> dict[str, Any]:
    meta = claim["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{meta['uid']}",
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER_NAME},
        },
        "spec": {
            "capacity": {"storage": claim["spec"]["resources"]["requests"]["storage"]},
            "accessModes": claim["spec"].get("accessModes", ["ReadWriteOnce"]),
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "volumeMode": "Filesystem",
            "local": {"path": str(path)},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}
                            ]
                        }
                    ]
                }
            },
        },
    }


def reconcile_once(api: Api, root: Path) -> None:
    volumes = api.call("GET", "/api/v1/persistentvolumes")["items"]
    existing = {v["metadata"]["name"] for v in volumes}
    for claim in api.call("GET", "/api/v1/persistentvolumeclaims")["items"]:
        meta = claim["metadata"]
        if claim["spec"].get("storageClassName") != STORAGE_CLASS or claim["spec"].get("volumeName"):
            continue
        if meta.get("deletionTimestamp") or f"pvc-{meta['uid']}" in existing:
            continue
        path = root / f"{meta['namespace']}-{meta['name']}-{meta['uid'][:8]}"
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o1777)
        try:
            api.call("POST", "/api/v1/persistentvolumes", build_volume(claim, path))
        except urllib.error.HTTPError as err:
            if err.code != 409:
                raise
        log.info("provisioned %s for claim %s/%s", path, meta["namespace"], meta["name"])
    for volume in volumes:
        spec = volume["spec"]
        if spec.get("storageClassName") != STORAGE_CLASS or volume.get("status", {}).get("phase") != "Released":
            continue
        path = Path(spec["local"]["path"])
        if path.parent == root:
            shutil.rmtree(path, ignore_errors=True)
        api.call("DELETE", f"/api/v1/persistentvolumes/{volume['metadata']['name']}")
        log.info("deleted %s and its directory %s", volume["metadata"]["name"], path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", required=True)
    parser.add_argument("--pki", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    running = True

    def stop(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    api = Api(args.server, args.pki)
    while running:
        try:
            reconcile_once(api, args.root)
        except (urllib.error.URLError, OSError, KeyError) as err:
            log.warning("provisioning pass failed (retrying): %s", err)
        time.sleep(args.interval)


if __name__ == "__main__":
    main()
