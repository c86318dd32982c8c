"""One training run: spec -> (train or import) -> ONNX -> parity -> compression -> artifact -> report.

Imported by the CLI only when `modeldeploy train` runs; TensorFlow is imported further down, only for the paths that
need it (an ONNX import never loads it).
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import onnx

from modeldeploy import contracts, objectstore
from modeldeploy.spec import Compression, Dataset, ImportModel, ModelDeploymentSpec, SpecError, Training
from modeldeploy_training import artifact, compression, data, onnxutil
from modeldeploy_training.errors import (
    InvalidData,
    InvalidModel,
    InvalidSpec,
    ParityFailed,
    StorageUnavailable,
    TrainingFailure,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")

PARITY_MAX_ABS_DIFF = 1e-4
MODEL_FILES = {"model.keras": "keras", "model.h5": "h5", "saved_model": "savedmodel", "model.onnx": "onnx"}
RANDOM_PROBE_SAMPLES = 64
# The TFLite failure's message in the 4 KB report; the model card keeps all of it.
TFLITE_REPORT_MESSAGE_LIMIT = 400


@dataclass(frozen=True)
class Options:
    """Where things are: the artifact root, the data claim's mount, and the custom image's output directory."""

    output: Path = Path(contracts.ARTIFACT_MOUNT)
    data_root: Path = Path(contracts.DATA_MOUNT)
    user_output: Path = Path(contracts.USER_OUTPUT_DIR)


@dataclass
class ImportPlan:
    """A model brought by the user (spec.importModel, or what a custom training image left)."""

    model_path: Path
    fmt: str
    eval_path: Path | None = None
    labels_path: Path | None = None
    fingerprint: str = ""


@dataclass
class Prepared:
    """What the compression step needs, whichever way the model came."""

    source: Any  # tfmodels.SourceModel, or the ONNX import's equivalent
    x_eval: npt.NDArray[np.float32]
    y_eval: npt.NDArray[np.int64] | None
    calibration: npt.NDArray[np.float32]
    source_accuracy: float | None
    labels: list[str] | None
    task: str
    preprocessing: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    data_fingerprint: str | None = None
    metrics_note: str | None = None


def run_job(manifest: dict[str, Any], options: Options) -> dict[str, Any]:
    """Make (or find) the artifact of a ModelDeployment; returns the success report, raises TrainingFailure."""
    try:
        spec = ModelDeploymentSpec.parse(manifest["spec"])
    except SpecError as err:
        raise InvalidSpec(str(err)) from err
    # A dataset or model given by URI is downloaded here first (the pod's /tmp), then read like a file on a claim.
    with tempfile.TemporaryDirectory(prefix="modeldeploy-uri-") as scratch:
        return _run_job(str(manifest["metadata"]["name"]), spec, options, Path(scratch))


def _run_job(name: str, spec: ModelDeploymentSpec, options: Options, scratch: Path) -> dict[str, Any]:
    started = time.monotonic()
    comp = spec.compression
    try:
        formats = contracts.requested_formats(spec.document)
    except contracts.ContractError as err:
        raise InvalidSpec(str(err)) from err
    digest = spec.hash
    local = localize_uris(spec, options, scratch)
    options = local.options
    training = spec.training
    plan: ImportPlan | None = None
    builtin: tuple[Training, Dataset] | None = None
    if training is not None and training.recipe != "custom":
        dataset_spec = local.dataset
        if dataset_spec is None:
            raise InvalidSpec("spec.training.dataset is required for the built-in recipes")
        builtin = (training, dataset_spec)
        if dataset_spec.builtin:
            fingerprint: str = "builtin:" + dataset_spec.builtin
        else:
            path = data.resolve_data_path(dataset_spec.path or "", options.data_root, "spec.training.dataset.path")
            fingerprint = data.fingerprint_path(path)
    elif training is not None:
        plan = find_custom_model(options.user_output)
        fingerprint = plan.fingerprint
    else:
        plan = plan_import(local.import_model, options)
        fingerprint = plan.fingerprint
    version = contracts.model_version(digest, fingerprint)
    model_dir = options.output / name
    log.info("model %s version %s (spec %s, data %s)", name, version, digest[:12], fingerprint[:24])

    remote = storage_location(spec)
    if remote is not None:
        committed = _remote(lambda: objectstore.is_committed(remote, name, version))
        if committed is not None:
            log.info("version %s is already committed in %s: reusing it, nothing is trained", version, remote)
            return success_report(committed, name, version, reused=True, duration=time.monotonic() - started)

    artifact.remove_stale_temporaries(model_dir)
    existing = artifact.find_existing(model_dir, version)
    if existing is not None:
        log.info("version %s is already complete: reusing it, nothing is trained", version)
        if remote is not None:
            upload(model_dir / version, remote, name, version)
        return success_report(existing, name, version, reused=True, duration=time.monotonic() - started)

    with artifact.VersionWriter(model_dir, version) as writer:
        if builtin is not None:
            source_dir = writer.tmp / contracts.SOURCE_DIR
            prepared = train_builtin(*builtin, options.data_root, source_dir, comp.opset)
        elif plan is not None:
            prepared = prepare_import(plan, comp.opset, writer.tmp / contracts.SOURCE_DIR)
        else:  # unreachable: a spec trains with a recipe or a custom image, or imports
            raise InvalidSpec("set exactly one of spec.training or spec.importModel")
        card = compress_and_describe(prepared, comp, writer, formats)
        card.update(
            schema=contracts.MODEL_CARD_SCHEMA,
            name=name,
            version=version,
            specHash=digest,
            dataFingerprint=prepared.data_fingerprint,
            createdAt=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            libraries=library_versions(),
        )
        final = writer.commit(card)
    if remote is not None:
        upload(final, remote, name, version)
    return success_report(card, name, version, reused=False, duration=time.monotonic() - started)


# Datasets and models read from a URI: refused past these sizes before they are read (the pod's /tmp holds them).
MAX_DATASET_BYTES = 4 * 1024**3
MAX_IMPORT_BYTES = 4 * 1024**3


@dataclass(frozen=True)
class Localized:
    """The spec's dataset or model with any URI replaced by the path of its download (relative to the data root)."""

    dataset: Dataset | None
    import_model: ImportModel | None
    options: Options


def localize_uris(spec: ModelDeploymentSpec, options: Options, scratch: Path) -> Localized:
    """spec.training.dataset.uri and spec.importModel.uri (with its evalDataset) downloaded into scratch: the parts
    returned name them as paths relative to scratch, which becomes the data root. The version still comes from the
    original spec and the bytes (their fingerprint), so the same object gives the same version."""
    dataset = spec.training.dataset if spec.training is not None else None
    if dataset is not None and dataset.uri:
        path = download(dataset.uri, scratch, "spec.training.dataset.uri", MAX_DATASET_BYTES)
        local = dataset.model_copy(update={"path": path.as_posix()})
        return Localized(local, spec.import_model, replace(options, data_root=scratch))
    imp = spec.import_model
    if imp is not None and imp.uri:
        update = {"path": download(imp.uri, scratch, "spec.importModel.uri", MAX_IMPORT_BYTES).as_posix()}
        if imp.eval_dataset:
            if "://" not in imp.eval_dataset:
                raise InvalidSpec(
                    "spec.importModel.evalDataset must be a URI too when the model comes from spec.importModel.uri"
                )
            eval_path = download(imp.eval_dataset, scratch, "spec.importModel.evalDataset", MAX_DATASET_BYTES)
            update["evalDataset"] = eval_path.as_posix()
        return Localized(dataset, imp.model_copy(update=update), replace(options, data_root=scratch))
    return Localized(dataset, imp, options)


def download(uri: str, scratch: Path, field_name: str, max_bytes: int) -> Path:
    """One object into scratch, under its own file name (its suffix tells the format)."""
    try:
        location = objectstore.parse_uri(uri, field_name)
        base = posixpath.basename(location.key) or "object"
        target = scratch / f"{len(list(scratch.iterdir()))}" / base
        started = time.monotonic()
        objectstore.fetch_object(uri, target, max_bytes=max_bytes, field=field_name)
    except objectstore.StorageError as err:
        if err.reason in (objectstore.INVALID_URI,):
            raise InvalidSpec(err.message) from err
        if err.reason in (objectstore.NOT_FOUND, objectstore.TOO_LARGE):
            raise InvalidData(f"{err.message}; check {field_name}") from err
        raise StorageUnavailable(f"{err.reason}: {err.message}") from err
    log.info("read %s (%d bytes) in %.1f s", uri, target.stat().st_size, time.monotonic() - started)
    return target.relative_to(scratch)


def storage_location(spec: ModelDeploymentSpec) -> objectstore.Location | None:
    """spec.storage.uri, checked; None when the artifact lives on a claim only."""
    uri = spec.storage_uri
    if not uri:
        return None
    try:
        return objectstore.parse_uri(uri, "spec.storage.uri", writable=True)
    except objectstore.StorageError as err:
        raise InvalidSpec(err.message) from err


def _remote(call: Callable[[], _T]) -> _T:
    try:
        return call()
    except objectstore.StorageError as err:
        raise StorageUnavailable(f"{err.reason}: {err.message}") from err


def upload(version_dir: Path, remote: objectstore.Location, name: str, version: str) -> None:
    """Commit a complete local version to object storage: its files, then its card (objectstore.put_version)."""
    started = time.monotonic()
    _remote(lambda: objectstore.put_version(version_dir, remote, name, version))
    log.info("committed %s/%s to %s in %.1f s", name, version, remote, time.monotonic() - started)


def plan_import(imp: ImportModel | None, options: Options) -> ImportPlan:
    if imp is None:
        raise InvalidSpec("set exactly one of spec.training (train a model) or spec.importModel (bring a model file)")
    path = data.resolve_data_path(imp.path or "", options.data_root, "spec.importModel.path")
    fmt: str = imp.format
    if fmt == "auto":
        fmt = guess_model_format(path)
    eval_path = None
    if imp.eval_dataset:
        eval_path = data.resolve_data_path(imp.eval_dataset, options.data_root, "spec.importModel.evalDataset")
    return ImportPlan(path, fmt, eval_path, None, import_fingerprint(path, eval_path, None))


def find_custom_model(user_output: Path) -> ImportPlan:
    """What a custom training image left in /workspace/output: exactly one model, maybe labels.txt and eval.npz."""
    found = [user_output / n for n in MODEL_FILES if (user_output / n).exists()]
    if len(found) != 1:
        what = "none" if not found else ", ".join(p.name for p in found)
        raise InvalidModel(
            f"the training image must leave exactly one of {', '.join(MODEL_FILES)} in {user_output}; found {what}"
        )
    labels = user_output / "labels.txt"
    eval_path = user_output / "eval.npz"
    labels_path = labels if labels.is_file() else None
    eval_opt = eval_path if eval_path.is_file() else None
    return ImportPlan(
        found[0], MODEL_FILES[found[0].name], eval_opt, labels_path, import_fingerprint(found[0], eval_opt, labels_path)
    )


def import_fingerprint(*paths: Path | None) -> str:
    """The bytes of the model (and its eval data and labels): a changed file at the same path is a new version."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update((data.fingerprint_path(path) if path is not None else "-").encode())
    return digest.hexdigest()


def guess_model_format(path: Path) -> str:
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return "savedmodel"
        raise InvalidModel(f"{path} is a directory without saved_model.pb; give a SavedModel, .keras, .h5 or .onnx")
    suffix = path.suffix.lower()
    formats = {".keras": "keras", ".h5": "h5", ".hdf5": "h5", ".onnx": "onnx"}
    if suffix not in formats:
        raise InvalidSpec(f"cannot tell the model format of {path}; set spec.importModel.format")
    return formats[suffix]


def train_builtin(training: Training, dataset_spec: Dataset, data_root: Path, source_dir: Path, opset: int) -> Prepared:
    from modeldeploy_training import tfmodels  # noqa: PLC0415  (TensorFlow only for Keras models)

    recipe = training.recipe
    if recipe not in {"cnn", "mlp"}:
        raise InvalidSpec(f"spec.training.recipe {recipe!r} is unknown; use cnn, mlp or custom")
    dataset = data.load_dataset(dataset_spec, data_root)
    seed = training.seed
    parts = data.split(dataset, training.validation_split, seed)
    x_train = tfmodels.prepare_inputs(recipe, parts.x_train)
    x_test = tfmodels.prepare_inputs(recipe, parts.x_test)
    parts = data.Split(x_train, parts.y_train, x_test, parts.y_test)
    tfmodels.set_seed(seed)
    epochs, batch_size = training.epochs, training.batch_size
    learning_rate = training.learning_rate
    model = tfmodels.build_model(recipe, x_train, dataset.num_classes, learning_rate)
    started = time.monotonic()
    history = tfmodels.train(model, parts, epochs, batch_size, seed)
    duration = time.monotonic() - started
    predict = tfmodels.keras_predict(model)
    source_accuracy = compression.accuracy(predict(x_test), parts.y_test)
    log.info("trained in %.1f s: held-out accuracy %.4f on %d samples", duration, source_accuracy, len(x_test))
    source = tfmodels.SourceModel(
        onnx_model=tfmodels.keras_to_onnx(model, opset),
        predict=predict,
        save_source=tfmodels.save_keras(model),
        tflite_converter=tfmodels.keras_tflite_converter(model),
    )
    source.save_source(source_dir)
    return Prepared(
        source=source,
        x_eval=x_test,
        y_eval=parts.y_test,
        calibration=x_train[: compression.CALIBRATION_SAMPLES],
        source_accuracy=source_accuracy,
        labels=dataset.labels,
        task="classification",
        preprocessing=dataset.preprocessing,
        data_fingerprint=dataset.fingerprint,
        training={
            "recipe": recipe,
            "epochs": epochs,
            "batchSize": batch_size,
            "learningRate": learning_rate,
            "seed": seed,
            "trainSamples": len(x_train),
            "durationSeconds": round(duration, 3),
            "history": history,
        },
    )


@dataclass
class _OnnxSource:
    onnx_model: Any
    predict: None
    path: Path

    def save_source(self, dest: Path) -> None:
        shutil.copyfile(self.path, dest / "model.onnx")


def prepare_import(plan: ImportPlan, opset: int, source_dir: Path) -> Prepared:
    source: Any
    if plan.fmt == "onnx":
        source = _OnnxSource(load_onnx(plan.model_path), None, plan.model_path)
    elif plan.fmt in {"keras", "h5"}:
        from modeldeploy_training import tfmodels  # noqa: PLC0415  (TensorFlow only for Keras models)

        source = tfmodels.load_keras(plan.model_path, opset)
    elif plan.fmt == "savedmodel":
        from modeldeploy_training import tfmodels  # noqa: PLC0415  (TensorFlow only for Keras models)

        source = tfmodels.load_saved_model(plan.model_path, opset)
    else:
        raise InvalidSpec(f"model format {plan.fmt!r} is unknown; use keras, h5, savedmodel or onnx")
    source.save_source(source_dir)
    labels = read_labels(plan.labels_path) if plan.labels_path else None
    if plan.eval_path is not None:
        x_raw, y_raw = data.read_npz(plan.eval_path)
        x_eval, y_eval = check_eval_data(x_raw, y_raw, str(plan.eval_path))
        note = None
    else:
        x_eval, y_eval = random_probe(source.onnx_model), None
        note = f"no eval data: accuracy is agreement with the source model on {RANDOM_PROBE_SAMPLES} random inputs"
    return Prepared(
        source=source,
        x_eval=x_eval,
        y_eval=y_eval,
        calibration=x_eval[: compression.CALIBRATION_SAMPLES],
        source_accuracy=None,
        labels=labels,
        task="classification" if y_eval is not None or labels else "other",
        metrics_note=note,
    )


def load_onnx(path: Path) -> Any:
    try:
        model = onnx.load(path)
        onnx.checker.check_model(model)
    except Exception as err:  # onnx raises DecodeError, ValidationError, OSError... for a bad file
        raise InvalidModel(f"{path} is not a valid ONNX model ({type(err).__name__}: {err})") from err
    return model


def read_labels(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidData(f"{path} is not a readable UTF-8 file of one label per line ({err})") from err


def check_eval_data(x: Any, y: Any, where: str) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Held-out data for an imported model: y holds the model's class indices (argmax positions)."""
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype.kind not in "biuf" or x.ndim < 2:
        raise InvalidData(f"{where}: x has dtype {x.dtype} and shape {x.shape}; give numeric samples (N, ...)")
    if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "biu":
        raise InvalidData(
            f"{where}: y must be N integer class indices matching x's {len(x)} samples (got {y.shape} {y.dtype})"
        )
    if not np.isfinite(x.astype(np.float64)).all():
        raise InvalidData(f"{where}: x holds NaN or infinite values; clean them")
    return x.astype(np.float32), y.astype(np.int64)


def random_probe(model: Any) -> npt.NDArray[np.float32]:
    """Inputs for parity and latency when the user gave no eval data: uniform 0..1 in the model's input shape."""
    inputs, _ = onnxutil.tensor_descriptions(model)
    if len(inputs) != 1:
        raise InvalidModel(f"the model has {len(inputs)} inputs; only single-input models are supported")
    shape = inputs[0]["shape"][1:]
    if any(d < 1 for d in shape):
        raise InvalidSpec(
            f"the model's input shape {inputs[0]['shape']} has dynamic dimensions besides the batch; "
            "give eval data (spec.importModel.evalDataset, or eval.npz) to measure it"
        )
    return np.random.default_rng(0).random((RANDOM_PROBE_SAMPLES, *shape), dtype=np.float32)


def compress_and_describe(
    prepared: Prepared,
    comp: Compression,
    writer: artifact.VersionWriter,
    formats: tuple[str, ...] = contracts.DEFAULT_FORMATS,
) -> dict[str, Any]:
    """Parity, the candidates, the choice; writes model.onnx (and model.tflite when formats has tflite) and returns
    the card without its identity fields."""
    requested: str = comp.quantization
    max_drop = comp.max_accuracy_drop
    max_ratio = comp.max_latency_ratio
    fp32_path = writer.work / "fp32.onnx"
    onnx.save_model(prepared.source.onnx_model, fp32_path)
    fp32_out = onnxutil.run_batched(onnxutil.session(fp32_path), prepared.x_eval)
    parity = 0.0
    if prepared.source.predict is not None:
        source_out = prepared.source.predict(prepared.x_eval)
        parity = float(np.max(np.abs(source_out.reshape(fp32_out.shape) - fp32_out)))
        log.info("parity: max abs difference %.3g between the source model and ONNX fp32", parity)
        if parity > PARITY_MAX_ABS_DIFF or (
            prepared.y_eval is not None
            and compression.accuracy(source_out, prepared.y_eval) != compression.accuracy(fp32_out, prepared.y_eval)
        ):
            raise ParityFailed(
                f"the ONNX model differs from the source model by up to {parity:.3g} (limit {PARITY_MAX_ABS_DIFF}) "
                f"on {len(prepared.x_eval)} held-out samples; the conversion is wrong for this model: report it, or "
                "import the model as .onnx"
            )
    else:
        source_out = fp32_out
    if prepared.y_eval is not None:
        width = fp32_out.reshape(len(fp32_out), -1).shape[1]
        if prepared.y_eval.min() < 0 or prepared.y_eval.max() >= width:
            raise InvalidData(f"eval data: labels must be class indices 0..{width - 1} of the model's output")
        y_ref = prepared.y_eval
    else:
        y_ref = np.argmax(source_out.reshape(len(source_out), -1), axis=1)
    source_accuracy = prepared.source_accuracy
    if source_accuracy is None:
        source_accuracy = compression.accuracy(source_out, y_ref)

    candidates: list[compression.Candidate] = []
    paths: dict[str, Path] = {}
    for cname in compression.candidate_names(requested):
        try:
            path = compression.build_candidate(cname, fp32_path, writer.work, prepared.calibration)
            acc = compression.accuracy(onnxutil.run_batched(onnxutil.session(path), prepared.x_eval), y_ref)
        except OSError:
            raise  # a full volume is not a property of one candidate
        except Exception as err:  # noqa: BLE001  (a quantizer failing on this graph rules out that candidate only)
            log.warning("candidate %s could not be built: %s", cname, err)
            candidates.append(
                compression.Candidate(name=cname, size_bytes=0, rejected_because=f"not built: {err}"[:200])
            )
            continue
        paths[cname] = path
        candidates.append(
            compression.Candidate(
                name=cname,
                size_bytes=path.stat().st_size,
                accuracy=round(acc, 6),
                accuracy_drop=round(source_accuracy - acc, 6),
            )
        )
    latency = compression.measure_latency(paths, prepared.x_eval)
    base32 = latency["fp32"][1]
    for c in candidates:
        if c.name in latency:
            c.latency_p50_us_batch1 = round(latency[c.name][0], 2)
            c.latency_p50_us_batch32 = round(latency[c.name][1], 2)
            c.latency_ratio = round(latency[c.name][1] / base32, 3)
    chosen, reason = compression.choose(candidates, requested, max_drop, max_ratio)
    for c in candidates:
        log.info(
            "candidate %-14s %7d bytes accuracy %s p50 %s us (batch 1) %s us (batch 32) ratio %s %s",
            c.name,
            c.size_bytes,
            c.accuracy,
            c.latency_p50_us_batch1,
            c.latency_p50_us_batch32,
            c.latency_ratio,
            "accepted" if c.accepted else f"rejected: {c.rejected_because}",
        )
    log.info("chosen: %s (%s)", chosen.name, reason)
    shutil.copyfile(paths[chosen.name], writer.tmp / contracts.MODEL_FILE)
    served = onnx.load(writer.tmp / contracts.MODEL_FILE)
    inputs, outputs = onnxutil.tensor_descriptions(served)
    metrics: dict[str, Any] = {
        "accuracy": chosen.accuracy,
        "sourceAccuracy": round(source_accuracy, 6),
        "parityMaxAbsDiff": parity,
        "evaluatedOn": len(prepared.x_eval),
    }
    if prepared.metrics_note:
        metrics["note"] = prepared.metrics_note
    card: dict[str, Any] = {
        "task": prepared.task,
        "inputs": inputs,
        "outputs": outputs,
        "metrics": metrics,
        "compression": {
            "requested": requested,
            "chosen": chosen.name,
            "reason": reason,
            "maxAccuracyDrop": max_drop,
            "maxLatencyRatio": max_ratio,
            "opset": onnxutil.opset_of(served),
            "candidates": [c.card() for c in candidates],
        },
    }
    if "tflite" in formats:
        from modeldeploy_training import tflite  # noqa: PLC0415  (the LiteRT interpreter only when asked for)

        card["tflite"] = tflite.make(
            getattr(prepared.source, "tflite_converter", None),
            requested=requested,
            max_drop=max_drop,
            x_eval=prepared.x_eval,
            y_ref=y_ref,
            source_accuracy=source_accuracy,
            calibration=prepared.calibration,
            out_path=writer.tmp / contracts.TFLITE_FILE,
        )
    if prepared.labels:
        card["labels"] = prepared.labels
    if prepared.preprocessing:
        card["preprocessing"] = prepared.preprocessing
    if prepared.training:
        card["training"] = prepared.training
    return card


def library_versions() -> dict[str, str | None]:
    """Versions from the installed distributions (no import: an ONNX import never loads TensorFlow)."""
    out: dict[str, str | None] = {}
    for key, dists in {
        "tensorflow": ("tensorflow-cpu", "tensorflow"),
        "keras": ("keras",),
        "tf2onnx": ("tf2onnx",),
        "onnx": ("onnx",),
        "onnxruntime": ("onnxruntime",),
        "numpy": ("numpy",),
    }.items():
        out[key] = None
        for dist in dists:
            try:
                out[key] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def success_report(card: dict[str, Any], name: str, version: str, *, reused: bool, duration: float) -> dict[str, Any]:
    """The termination message of a successful run, from the model card (so a reuse reports the same numbers)."""
    comp = card.get("compression") or {}
    candidates = comp.get("candidates") or []
    sizes = {c.get("name"): c.get("sizeBytes") for c in candidates}
    metrics = card.get("metrics") or {}
    files = card.get("files") or {}
    report: dict[str, Any] = {
        "ok": True,
        "version": version,
        "path": f"{name}/{version}",
        "specHash": card.get("specHash"),
        "reused": reused,
        "accuracy": metrics.get("accuracy"),
        "sourceAccuracy": metrics.get("sourceAccuracy"),
        "quantization": comp.get("chosen"),
        "sizeBytes": (files.get(contracts.MODEL_FILE) or {}).get("sizeBytes"),
        "fp32SizeBytes": sizes.get("fp32"),
        "durationSeconds": round(duration, 3),
        "candidates": [
            {k: c.get(k) for k in ("name", "accuracy", "sizeBytes", "latencyRatio", "accepted")} for c in candidates
        ],
    }
    tflite = _tflite_report(card.get("tflite"))
    if tflite is not None:
        report["tflite"] = tflite
    return report


def _tflite_report(section: Any) -> dict[str, Any] | None:
    """The report's (and so the status') short form of the card's `tflite` section."""
    if not isinstance(section, dict):
        return None
    if "failureReason" in section:
        message = " ".join(str(section.get("message", "")).split())
        return {"failureReason": section["failureReason"], "message": message[:TFLITE_REPORT_MESSAGE_LIMIT]}
    return {
        "quantization": section.get("chosen"),
        "accuracy": section.get("accuracy"),
        "sizeBytes": section.get("sizeBytes"),
        "sha256": section.get("sha256"),
    }


def failure_report(failure: TrainingFailure) -> dict[str, Any]:
    return {"ok": False, "reason": failure.reason, "message": failure.message}
