"""`modeldeploy run`: a ModelDeployment's pipeline on this machine, without Kubernetes.

The same code as in the cluster: the training package makes the artifact (train, export, compress), the serving
package serves it; only the volume is a local directory and the pod is this process.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from modeldeploy import contracts, serving_settings, spec
from modeldeploy.tools import client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    file: Path
    output: Path
    data_root: Path
    host: str = "127.0.0.1"
    port: int = 8080
    grpc_port: int = 0
    epochs: int | None = None
    exit_after_predict: bool = False


@dataclass(frozen=True)
class Sample:
    """One row the model can take, and what it should be, for the prediction printed once serving."""

    x: npt.NDArray[Any]
    truth: str | None
    where: str


class Progress:
    """Numbered steps on the given stream (stdout), with the time since the start."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def step(self, text: str) -> None:
        self.out.write(f"[{self.elapsed():6.1f}s] {text}\n")
        self.out.flush()


def load(options: RunOptions) -> dict[str, Any]:
    manifest = spec.load_manifest(options.file)
    if options.epochs is not None:
        training = manifest["spec"].get("training")
        if not isinstance(training, dict):
            raise spec.SpecError("--epochs applies to spec.training; this spec imports a model (spec.importModel)")
        training["epochs"] = options.epochs
    return manifest


def describe_training(md_spec: spec.ModelDeploymentSpec) -> str:
    comp = md_spec.compression
    training = md_spec.training
    if training is not None:
        dataset = training.dataset
        data = f"builtin {dataset.builtin}" if dataset and dataset.builtin else str(dataset.path if dataset else None)
        what = f"recipe {training.recipe} on {data}, {training.epochs} epochs"
    else:
        what = f"import of {md_spec.import_model.path if md_spec.import_model else None}"
    formats = comp.formats
    also = f"; also {', '.join(f for f in formats if f != 'onnx')}" if len(formats) > 1 else ""
    return f"{what}; compression {comp.quantization} within {comp.max_accuracy_drop} accuracy{also}"


def train(manifest: dict[str, Any], options: RunOptions) -> dict[str, Any]:
    """The training Job's program in this process; its report (ok or not)."""
    from modeldeploy_training.errors import TrainingFailure  # noqa: PLC0415  (TensorFlow comes with it)
    from modeldeploy_training.job import Options, failure_report, run_job  # noqa: PLC0415

    user_output = options.data_root / "workspace-output"
    try:
        return run_job(manifest, Options(options.output, options.data_root, user_output))
    except TrainingFailure as failure:
        return failure_report(failure)


def sample_for(md_spec: spec.ModelDeploymentSpec, data_root: Path) -> Sample | None:
    """A row of the spec's own data: the last sample of the training dataset, or the first of importModel's eval."""
    training = md_spec.training
    if training is not None and training.dataset is not None:
        from modeldeploy_training.data import load_dataset  # noqa: PLC0415

        dataset = load_dataset(training.dataset, data_root)
        last = len(dataset.x) - 1
        return Sample(dataset.x[last:], dataset.labels[int(dataset.y[last])], f"sample #{last} of {dataset.source}")
    evaluation = md_spec.import_model.eval_dataset if md_spec.import_model else None
    if evaluation:
        with np.load(data_root / evaluation, allow_pickle=False) as archive:
            return Sample(archive["x"][:1], str(archive["y"][0]), f"sample #0 of {evaluation}")
    return None


def port_problem(host: str, port: int) -> str | None:
    """Why the port cannot be listened on, or None; checked first because the server's own failure is terse."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as err:
        return err.strerror or str(err)
    return None


def summarize(report: dict[str, Any]) -> str:
    size = report.get("sizeBytes") or 0
    fp32 = report.get("fp32SizeBytes") or 0
    ratio = f" ({size / fp32:.0%} of fp32)" if fp32 else ""
    return (
        f"version {report['version']}{' (reused: same spec, same data)' if report.get('reused') else ''}: "
        f"{report.get('quantization')}, accuracy {report.get('accuracy')}, {size} bytes{ratio}"
    )


def candidate_lines(card: dict[str, Any]) -> list[str]:
    """Every candidate of every format, one line each (the chosen ones marked *), from the model card."""
    rows: list[tuple[str, dict[str, Any], bool]] = []
    comp = card.get("compression") or {}
    rows += [("onnx", c, c.get("name") == comp.get("chosen")) for c in comp.get("candidates") or []]
    tflite = card.get("tflite") or {}
    rows += [("tflite", c, c.get("name") == tflite.get("chosen")) for c in tflite.get("candidates") or []]
    if not rows:
        return []
    lines = [f"  {'format':<7} {'candidate':<15} {'bytes':>8} {'accuracy':>9}  {'latency x fp32':>14}  verdict"]
    for fmt, c, chosen in rows:
        accuracy = f"{c['accuracy']:.4f}" if isinstance(c.get("accuracy"), int | float) else "-"
        ratio = f"{c['latencyRatio']:.2f}" if isinstance(c.get("latencyRatio"), int | float) else "-"
        verdict = "accepted" if c.get("accepted") else f"rejected: {c.get('rejectedBecause')}"
        lines.append(
            f"{'*' if chosen else ' '} {fmt:<7} {c.get('name', '?'):<15} {c.get('sizeBytes') or 0:>8} {accuracy:>9}  "
            f"{ratio:>14}  {verdict}"
        )
    return lines


def tflite_summary(section: dict[str, Any], version_dir: Path) -> str:
    if "failureReason" in section:
        return f"no {contracts.TFLITE_FILE} ({section['failureReason']}): {section.get('message')}"
    return (
        f"{section.get('reason')}; {version_dir / str(section.get('file', contracts.TFLITE_FILE))} "
        f"({section.get('sizeBytes')} bytes, {section.get('quantization')})"
    )


async def serve_and_predict(
    settings: Any, endpoint: client.Endpoint, sample: Sample | None, options: RunOptions, progress: Progress
) -> int:
    from modeldeploy_serving.server import ServingProcess  # noqa: PLC0415 (onnxruntime, uvicorn)

    process = ServingProcess(settings)
    task = asyncio.create_task(process.run(), name="serving")
    while not task.done() and not await asyncio.to_thread(client.is_ready, endpoint):
        await asyncio.wait({task}, timeout=0.1)  # wakes at once if the server exits (a port taken, say)
    if task.done():
        return task.result()
    progress.step(f"ready: {endpoint.model_path} (Open Inference Protocol V2; Ctrl-C stops)")
    if sample is not None:
        try:
            meta = await asyncio.to_thread(client.model_metadata, endpoint)
            batch = client.fit_input(sample.x, meta.inputs[0], sample.where)
            (row,) = await asyncio.to_thread(client.classify, endpoint, meta, batch, 3)
            truth = f" (its label: {sample.truth})" if sample.truth is not None else ""
            progress.step(f"prediction for {sample.where}{truth}: {client.format_row(row)}")
        except client.PredictError as err:
            progress.step(f"the sample prediction failed: {err}")
            process.request_stop(None)
            await task
            return 1
    else:
        progress.step("no sample data in the spec to predict on; try: modeldeploy predict --model NAME FILE")
    progress.out.write(
        f"try it: modeldeploy predict --url http://{endpoint.base.split('://', 1)[1]} --model {endpoint.model} "
        "IMAGE.png|ARRAY.npy\n"
    )
    progress.out.flush()
    if options.exit_after_predict:
        process.request_stop(None)
    return await task


def fetch_committed(name: str, version: str, storage: spec.Storage, output: Path, progress: Progress) -> Path | None:
    """Copy a committed version back from spec.storage.uri into OUTPUT/.fetched/ (readers skip dot names), verified;
    None after saying why it could not."""
    from modeldeploy import objectstore  # noqa: PLC0415
    from modeldeploy.fetch import parse_size  # noqa: PLC0415

    uri = storage.uri or ""
    try:
        root = objectstore.parse_uri(uri, "spec.storage.uri", writable=True)
        started = time.monotonic()
        version_dir, _ = objectstore.fetch_version(
            root, name, version, output / ".fetched", max_bytes=parse_size(storage.size)
        )
    except objectstore.StorageError as err:
        progress.step(f"cannot fetch {name}/{version} from {uri}: {err.reason}: {err.message}")
        return None
    progress.step(
        f"fetched {version} from {uri} in {time.monotonic() - started:.2f}s, every file checked against its card"
    )
    return version_dir


def run_locally(options: RunOptions, out: TextIO = sys.stdout) -> int:
    progress = Progress(out)
    try:
        manifest = load(options)
        md_spec = spec.parse_spec(manifest)
    except spec.SpecError as err:
        out.write(f"modeldeploy run: {err}\n")
        return 2
    name = manifest["metadata"]["name"]
    progress.step(f"{name}: training ({describe_training(md_spec)}); artifacts in {options.output}")
    report = train(manifest, options)
    if not report.get("ok"):
        progress.step(f"training failed: {report.get('reason')}: {report.get('message')}")
        return 1
    version_dir = options.output / str(report["path"])
    progress.step(f"trained and compressed in {report.get('durationSeconds', 0):.1f}s: {summarize(report)}")
    if md_spec.storage_uri:
        # What a serving pod does: the version as committed to object storage, every file checked against its card.
        fetched = fetch_committed(name, str(report["version"]), md_spec.storage, options.output, progress)
        if fetched is None:
            return 1
        version_dir = fetched
    card = contracts.read_model_card(version_dir) or {}
    for line in candidate_lines(card):
        progress.out.write(f"{'':9}{line}\n")
    candidates = (card.get("compression") or {}).get("reason")
    if candidates:
        progress.step(f"compression: {candidates}")
    tflite = card.get("tflite")
    if isinstance(tflite, dict):
        progress.step(f"tflite: {tflite_summary(tflite, version_dir)}")

    from modeldeploy_serving.server import configure_logging  # noqa: PLC0415
    from modeldeploy_serving.settings import Settings  # noqa: PLC0415

    from modeldeploy.envsettings import SettingsError  # noqa: PLC0415

    try:
        settings = Settings.load(
            overrides={
                **serving_settings.from_spec(md_spec.serving),
                "model_dir": version_dir,
                "host": options.host,
                "http_port": options.port,  # the command's ports, not the pod's
                "grpc_port": options.grpc_port,
                "shutdown_grace_seconds": 5.0,
            }
        )
    except SettingsError as err:
        progress.step(f"cannot serve: {err}")
        return 2
    problem = port_problem(options.host, options.port)
    if problem:
        progress.step(f"cannot serve on {options.host}:{options.port}: {problem}; choose another port with --port")
        return 1
    configure_logging("WARNING")
    client_host = "127.0.0.1" if options.host in {"0.0.0.0", "::", ""} else options.host
    endpoint = client.Endpoint(f"http://{client_host}:{options.port}", name)
    sample = sample_for(md_spec, options.data_root)
    progress.step(f"serving {version_dir} on http://{options.host}:{options.port}")
    try:
        code = asyncio.run(serve_and_predict(settings, endpoint, sample, options, progress))
    except SystemExit as exit_:  # uvicorn exits the process when it cannot bind (a port taken since the check)
        code = exit_.code if isinstance(exit_.code, int) else 1
    progress.step("stopped" if code == 0 else f"the server exited with status {code}; its log line above says why")
    return code
