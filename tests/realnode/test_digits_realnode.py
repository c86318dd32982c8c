"""The digits sample for real on the local cluster's real node: TensorFlow trains in the training image, the
artifact lands on a host-path volume, onnxruntime pods serve it, and predictions come back through 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rn_support import ComponentLogs, HostEvidence, Models, RealCluster, Witness, nodeport_routed, stamp

from modeldeploy.cluster import realnode
from modeldeploy.cluster.portforward import PortForward
from modeldeploy.cluster.waiting import wait_until

pytestmark = [pytest.mark.realnode, pytest.mark.slow]

DIGITS = {
    "training": {"recipe": "cnn", "dataset": {"builtin": "digits"}, "epochs": 5, "batchSize": 32, "seed": 42},
    "compression": {"quantization": "dynamic", "maxAccuracyDrop": 0.01},
    "serving": {"replicas": 2},
    "storage": {"size": "1Gi"},
}
READY_TIMEOUT = 300


def held_out_digits(n: int = 60) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Digits the model never trained on: the trainer's own seeded split (seed 42, 20% held out)."""
    from modeldeploy_training import data  # noqa: PLC0415 (TensorFlow-free, but only these tests need it)

    parts = data.split(data.load_digits(), 0.2, 42)
    return parts.x_test[:n], parts.y_test[:n]


def predict(url: str, model: str, x: np.ndarray[Any, Any], timeout: float = 10) -> tuple[list[int], str]:
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    request = urllib.request.Request(
        f"{url}/v2/models/{model}/infer", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        out = json.load(response)
    probabilities = np.asarray(out["outputs"][0]["data"]).reshape(out["outputs"][0]["shape"])
    return [int(c) for c in probabilities.argmax(axis=1)], str(out.get("model_version"))


def serving_pods(models: Models, name: str) -> list[dict[str, Any]]:
    return [
        p
        for p in models.items("pods", f"app.kubernetes.io/instance={name}")
        if p["metadata"]["name"].startswith(f"{name}-") and "-train-" not in p["metadata"]["name"]
        and not p["metadata"].get("deletionTimestamp")
    ]  # fmt: skip


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def nodeport_service(models: Models, name: str) -> str:
    """A NodePort Service beside the operator's, same pods: kube-proxy answers it on 127.0.0.1 only."""
    selector = models.get("service", name)["spec"]["selector"]
    manifest = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{name}-nodeport"},
        "spec": {"type": "NodePort", "selector": selector, "ports": [{"port": 8080, "targetPort": 8080}]},
    }
    models.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    port = models.get("service", f"{name}-nodeport")["spec"]["ports"][0]["nodePort"]
    url = f"http://127.0.0.1:{port}"
    # No connection before kube-proxy routes the port: one it REJECTs leaves a conntrack entry that refuses a later
    # request from the same source port (nodeport_routed says how).
    service = f"{models.namespace}/{name}-nodeport"
    wait_until(lambda: nodeport_routed(service), timeout=60, what=f"kube-proxy to route {service} to an endpoint")
    x, _ = held_out_digits(1)
    wait_until(lambda: _answers(url, name, x), timeout=60, what=f"the NodePort {url} to answer")
    return url


def _answers(url: str, name: str, x: np.ndarray[Any, Any]) -> bool:
    try:
        predict(url, name, x, timeout=2)
    except (urllib.error.URLError, OSError):
        return False
    return True


class Load:
    """Requests in a loop until stopped; counts failures and the model versions seen. With `models`, a Witness
    records the namespace's pod, EndpointSlice and Event changes and the node's, HostEvidence reads what the host's
    network stack did about the first failed requests, and `explain()` lines each failure up with both and with what
    kube-proxy, the kubelet and the controller-manager logged around it."""

    def __init__(self, url: str, model: str, models: Models | None = None) -> None:
        self.url, self.model = url, model
        self.witness = Witness(models.cluster.kubeconfig, models.namespace) if models is not None else None
        port = int(url.rsplit(":", 1)[1])
        self.host = HostEvidence(port, f"{models.namespace}/{model}-nodeport") if models is not None else None
        self.logs = ComponentLogs(models.cluster.logs_dir, models.namespace) if models is not None else None
        self.evidence: dict[str, list[str]] = {}  # the first failures' host evidence, by their time
        self.x, _ = held_out_digits(4)
        self.ok = 0
        self.failures: list[str] = []
        self.versions: list[str] = []
        # The latest version answering and how many answers in a row came from it, replaced as one tuple so that a
        # reader never pairs a new version with the old one's count.
        self.run: tuple[str, int] = ("", 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            before = self.host.before() if self.host is not None else {}
            try:
                _, version = predict(self.url, self.model, self.x, timeout=5)
                self.ok += 1
                if not self.versions or self.versions[-1] != version:
                    self.versions.append(version)
                self.run = (version, self.run[1] + 1 if self.run[0] == version else 1)
            except (urllib.error.URLError, OSError) as err:
                # Milliseconds, to line a failure up with the EndpointSlice's, kube-proxy's and the pods' logs.
                when = stamp()
                self.failures.append(f"{when} {err}")
                if self.host is not None and len(self.evidence) < 3:  # read at once: conntrack forgets in 10 s
                    self.evidence[when] = self.host.after(before)
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self.witness is not None:
            self.witness.stop()

    def explain(self) -> str:
        """The failures, each with what the witness saw within 3 s of it."""
        total = self.ok + len(self.failures)
        parts = [f"{len(self.failures)} failed of {total}: {self.failures[:5]}"]
        for failure in self.failures[:3] if self.witness is not None else []:
            when = failure.split(" ", 1)[0]
            seen = self.witness.around(when) or ["(no pod, EndpointSlice, Event or node change)"]
            logged = self.logs.around(when) if self.logs is not None else []
            lines = "\n    ".join(seen + self.evidence.get(when, []) + logged)
            parts.append(f"  around {failure}:\n    {lines}")
        return "\n".join(parts)


def test_digits_trains_serves_and_predicts_held_out_digits(
    models: Models, port_forward: Callable[[str, str, int], PortForward]
) -> None:
    started = time.monotonic()
    models.apply("digits", DIGITS)
    status = models.wait_phase("digits", "Ready", READY_TIMEOUT)
    elapsed = time.monotonic() - started
    print(f"\ndigits: kubectl apply to Ready on the real node in {elapsed:.1f} s (training included)")

    # The accuracy in the status is the trainer's own, from its pod's termination message.
    job_pod = next(p for p in models.items("pods") if "-train-" in p["metadata"]["name"])
    report = json.loads(job_pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    assert report["ok"] is True
    assert status["versions"][0]["accuracy"] == pytest.approx(report["accuracy"])
    assert report["accuracy"] > 0.9

    pods = serving_pods(models, "digits")
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"] == realnode.NODE_NAME
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        container = pod["spec"]["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert any(m["mountPath"] == "/models" and m.get("readOnly") for m in container["volumeMounts"])

    x, y = held_out_digits()
    forward = port_forward(models.namespace, "service/digits", 8080)
    predicted, version = predict(forward.url, "digits", x)
    assert version == status["modelVersion"]
    correct = sum(int(p == t) for p, t in zip(predicted, y, strict=True))
    assert correct / len(y) >= 0.9, f"{correct}/{len(y)} held-out digits right: {predicted} vs {y.tolist()}"
    # kubectl writes a line for each connection it forwards: a forward whose output is not read stalls after about
    # two thousand connections (a full pipe), and the demo's forward may stay open that long.
    for _ in range(2500):  # a 64 KiB pipe holds about 2,260 of those lines
        with urllib.request.urlopen(f"{forward.url}/v2/health/ready", timeout=10) as response:
            assert response.status == 200


def test_scale_to_three_real_pods_and_a_deleted_one_is_replaced_while_serving(
    models: Models, real_cluster: RealCluster
) -> None:
    models.apply("digits", DIGITS)
    models.wait_phase("digits", "Ready", READY_TIMEOUT)
    models.kubectl("scale", "modeldeployment/digits", "--replicas=3")
    wait_until(
        lambda: len([p for p in serving_pods(models, "digits") if ready(p)]) == 3,
        timeout=120,
        what="three Ready serving pods",
    )
    assert {p["spec"]["nodeName"] for p in serving_pods(models, "digits")} == {realnode.NODE_NAME}
    models.wait_phase("digits", "Ready", 60)

    url = nodeport_service(models, "digits")
    load = Load(url, "digits", models)
    try:
        victim = serving_pods(models, "digits")[0]["metadata"]["name"]
        models.kubectl("delete", "pod", victim, "--wait=false")
        wait_until(
            lambda: (
                len([p for p in serving_pods(models, "digits") if ready(p) and p["metadata"]["name"] != victim]) == 3
            ),
            timeout=120,
            what=f"a replacement for {victim}",
        )
        ok_before = load.ok
        wait_until(lambda: load.ok > ok_before + 20, timeout=30, what="requests to keep succeeding")
    finally:
        load.stop()
    assert load.ok > 0
    assert not load.failures, f"while a pod was replaced: {load.explain()}"


def test_retrain_rolls_to_the_new_version_with_zero_failed_requests(models: Models) -> None:
    models.apply("digits", DIGITS)
    first = models.wait_phase("digits", "Ready", READY_TIMEOUT)["modelVersion"]
    url = nodeport_service(models, "digits")
    load = Load(url, "digits", models)
    try:
        retrained = json.loads(json.dumps(DIGITS))
        retrained["training"]["epochs"] = 6
        models.apply("digits", retrained)
        second = wait_until(
            lambda: (s := models.status("digits")).get("phase") == "Ready" and s.get("modelVersion") != first
            and models.get("modeldeployment", "digits")["metadata"]["generation"] == s.get("observedGeneration")
            and s["modelVersion"],
            timeout=READY_TIMEOUT,
            what="the retrained version to be Ready",
            interval=1,
        )  # fmt: skip
        # Ready means the old pods are deleted; kube-proxy stops sending them requests a moment later (while they
        # drain, they still answer with the old version). Done when only the new version answers, 20 times in a row.
        wait_until(
            lambda: load.run[0] == second and load.run[1] >= 20,
            timeout=30,
            what=f"20 answers in a row from {second}",
            describe=lambda: f"versions answering, in order: {load.versions}",
        )
    finally:
        load.stop()
    print(f"\nretrain under load: {load.ok + len(load.failures)} requests, {len(load.failures)} failed")
    assert not load.failures, load.explain()
    assert load.versions[0] == first


def test_training_on_bad_data_fails_with_the_trainers_message(models: Models, real_cluster: RealCluster) -> None:
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "dataset"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": realnode.STORAGE_CLASS,
            "resources": {"requests": {"storage": "10Mi"}},
        },
    }
    models.kubectl("apply", "-f", "-", input=json.dumps(claim))
    volume = wait_until(
        lambda: models.get("pvc", "dataset")["spec"].get("volumeName"), timeout=30, what="the dataset claim bound"
    )
    directory = Path(real_cluster.kubectl("get", "pv", volume, "-o", "jsonpath={.spec.local.path}").stdout)
    (directory / "train.csv").write_text("a,b,c\n1,2,3\n4,5,6\n", encoding="utf-8")

    spec = json.loads(json.dumps(DIGITS))
    spec["training"] = {"recipe": "mlp", "dataset": {"claimName": "dataset", "path": "train.csv"}, "epochs": 1}
    models.apply("bad", spec)
    status = models.wait_phase("bad", "Failed", 180)
    trained = next(c for c in status["conditions"] if c["type"] == "Trained")
    assert trained["reason"] == "InvalidData"
    assert "column 'label' not found" in trained["message"]


def test_a_tflite_version_is_pulled_out_of_the_cluster_verified_and_classifies(
    models: Models, real_cluster: RealCluster, tmp_path: Path
) -> None:
    """formats [onnx, tflite] trained in the training image; `modeldeploy pull -n` copies the served version's
    model.tflite out of a serving pod (kubectl exec), checked against the card and the status."""
    from modeldeploy_training import tflite  # noqa: PLC0415 (the LiteRT interpreter: the training extra)

    spec = json.loads(json.dumps(DIGITS))
    spec["compression"]["formats"] = ["onnx", "tflite"]
    spec["serving"]["replicas"] = 1
    models.apply("edge", spec)
    status = models.wait_phase("edge", "Ready", READY_TIMEOUT)
    recorded = status["compression"]["tflite"]
    out = tmp_path / "edge.tflite"
    pulled = subprocess.run(
        [sys.executable, "-m", "modeldeploy.cli", "pull", "edge", "--format", "tflite", "-n", models.namespace,
         "--kubeconfig", str(real_cluster.kubeconfig), "--kubectl", real_cluster.kubectl_path, "-o", str(out)],
        capture_output=True, text=True, env=real_cluster.env, timeout=120, check=False,
    )  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    model = out.read_bytes()
    assert hashlib.sha256(model).hexdigest() == recorded["sha256"] and len(model) == recorded["sizeBytes"]
    x, y = held_out_digits(120)
    accuracy = float(np.mean(tflite.predict(model, x.astype(np.float32)).argmax(1) == y))
    assert accuracy > 0.85, f"the pulled model.tflite classifies {accuracy:.3f} of 120 held-out digits"
