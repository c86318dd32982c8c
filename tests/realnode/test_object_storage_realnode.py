"""The digits sample with spec.storage.uri on the real node: trained in the training image, committed to the local
S3 server (versitygw, reached by the pods on the node's bridge), served by 3 replicas with no claim mounted, each
having fetched and verified its copy; a byte changed in the bucket keeps a new pod from starting, with the reason in
the status, while the running pods go on serving."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rn_support import Models, RealCluster
from test_digits_realnode import DIGITS, READY_TIMEOUT, held_out_digits, predict, ready, serving_pods

from modeldeploy import objectstore
from modeldeploy.cluster.local import LocalCluster
from modeldeploy.cluster.objectstore import client_env
from modeldeploy.cluster.portforward import PortForward
from modeldeploy.cluster.waiting import wait_until

pytestmark = [pytest.mark.realnode, pytest.mark.slow]


def test_three_replicas_serve_from_object_storage_and_a_corrupted_object_is_refused(
    models: Models,
    real_cluster: RealCluster,
    port_forward: Callable[[str, str, int], PortForward],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local = LocalCluster(real_cluster.name)
    store = local.object_store_info()
    if not store:
        pytest.skip(f"cluster {real_cluster.name} runs no object store (up --object-store)")
    prefix = models.namespace
    models.kubectl(
        "create", "secret", "generic", "object-store",
        f"--from-env-file={local.directory / 'object-store-pods.env'}",
    )  # fmt: skip
    spec: dict[str, Any] = json.loads(json.dumps(DIGITS))
    spec["serving"]["replicas"] = 3
    spec["storage"] = {"uri": f"s3://models/{prefix}", "secretRef": {"name": "object-store"}, "size": "64Mi"}
    models.apply("digits", spec)
    status = models.wait_phase("digits", "Ready", READY_TIMEOUT)
    version = status["modelVersion"]

    assert models.items("pvc") == []
    pods = serving_pods(models, "digits")
    assert len(pods) == 3 and all(ready(p) for p in pods)
    for pod in pods:
        assert not any("persistentVolumeClaim" in v for v in pod["spec"]["volumes"])
        (fetch,) = pod["status"]["initContainerStatuses"]
        assert fetch["name"] == "fetch" and fetch["state"]["terminated"]["exitCode"] == 0
    assert models.get("pdb", "digits")["spec"]["minAvailable"] == 1

    # The version in the bucket, as the trainer committed it: the card lists the bytes every pod checked.
    for key, value in client_env(store).items():
        monkeypatch.setenv(key, value)
    root = objectstore.parse_uri(f"s3://models/{prefix}")
    card = objectstore.is_committed(root, "digits", version)
    assert card is not None and card["metrics"]["accuracy"] > 0.9

    x, y = held_out_digits()
    forward = port_forward(models.namespace, "service/digits", 8080)
    predicted, served = predict(forward.url, "digits", x)
    assert served == version
    correct = sum(int(p == t) for p, t in zip(predicted, y, strict=True))
    assert correct / len(y) >= 0.9, f"{correct}/{len(y)} held-out digits right"

    # One byte of model.onnx changed in the bucket; then a pod is replaced: its fetch refuses the object.
    import obstore  # noqa: PLC0415

    bucket = objectstore.open_store(root)
    key = root.join("digits", version, "model.onnx").key
    data = bytearray(bytes(obstore.get(bucket, key).bytes()))
    data[len(data) // 2] ^= 0x01
    obstore.put(bucket, key, bytes(data))
    victim = pods[0]["metadata"]["name"]
    models.kubectl("delete", "pod", victim, "--wait=false")

    def degraded() -> str:
        conditions = {c["type"]: c for c in models.status("digits").get("conditions") or []}
        message = str(conditions.get("Degraded", {}).get("message", ""))
        return message if conditions.get("Degraded", {}).get("status") == "True" else ""

    message = wait_until(degraded, timeout=120, what="Degraded with the fetch's reason", interval=1)
    assert "container fetch" in message and "ChecksumMismatch" in message, message
    survivors = [p for p in serving_pods(models, "digits") if ready(p)]
    assert len(survivors) == 2  # the two running pods keep what they verified when they started
    survivor = port_forward(models.namespace, f"pod/{pods[1]['metadata']['name']}", 8080)
    predicted, served = predict(survivor.url, "digits", x)
    assert served == version
    assert sum(int(p == t) for p, t in zip(predicted, y, strict=True)) / len(y) >= 0.9


@pytest.mark.timeout(900)  # two trainings (the deleted one and the Job's retry) and the hook's pauses
def test_a_trainer_deleted_between_two_objects_leaves_no_servable_version_and_its_retry_commits(
    models: Models,
    real_cluster: RealCluster,
    port_forward: Callable[[str, str, int], PortForward],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    local = LocalCluster(real_cluster.name)
    store = local.object_store_info()
    if not store:
        pytest.skip(f"cluster {real_cluster.name} runs no object store (up --object-store)")
    prefix = models.namespace
    # The test hook: the trainer waits 10 s after each object it uploads (the Secret's keys are its environment).
    env_file = tmp_path / "object-store.env"
    env_file.write_text(
        (local.directory / "object-store-pods.env").read_text() + f"{objectstore.UPLOAD_PAUSE_ENV}=10\n"
    )
    models.kubectl("create", "secret", "generic", "object-store", f"--from-env-file={env_file}")
    spec: dict[str, Any] = json.loads(json.dumps(DIGITS))
    spec["serving"]["replicas"] = 1
    spec["storage"] = {"uri": f"s3://models/{prefix}", "secretRef": {"name": "object-store"}, "size": "64Mi"}
    models.apply("digits", spec)

    # versitygw's posix backend keeps each object as a file: the first one of the upload is model.onnx.
    bucket_dir = Path(store["data"]) / "models" / prefix / "digits"
    first = wait_until(
        lambda: next(iter(bucket_dir.glob("v*/model.onnx")), None), timeout=READY_TIMEOUT, interval=0.5,
        what="the trainer's first object in the bucket",
    )  # fmt: skip
    version = first.parent.name
    (trainer,) = [p["metadata"]["name"] for p in models.items("pods") if "-train-" in p["metadata"]["name"]]
    models.kubectl("delete", "pod", trainer, "--grace-period=1", "--wait=true", timeout=120)

    for key, value in client_env(store).items():
        monkeypatch.setenv(key, value)
    root = objectstore.parse_uri(f"s3://models/{prefix}")
    assert (first.parent / "model.onnx").exists() and not (first.parent / "model.json").exists()
    assert objectstore.read_card(root, "digits", version) is None
    with pytest.raises(objectstore.StorageError) as refused:
        objectstore.fetch_version(root, "digits", version, Path(store["data"]).parent / "probe", max_bytes=2**26)
    assert refused.value.reason == objectstore.INCOMPLETE
    assert models.status("digits").get("phase") != "Ready"

    # The Job's retry trains again and commits the same version; then it serves.
    status = models.wait_phase("digits", "Ready", READY_TIMEOUT + 120)
    assert status["modelVersion"] == version
    assert objectstore.is_committed(root, "digits", version) is not None
    x, y = held_out_digits()
    forward = port_forward(models.namespace, "service/digits", 8080)
    predicted, served = predict(forward.url, "digits", x)
    assert served == version
    assert sum(int(p == t) for p, t in zip(predicted, y, strict=True)) / len(y) >= 0.9
