"""The two contracts the three programs share: the model artifact on the volume and the training Job's report.

docs/contracts/model-artifact.md and docs/contracts/training-job.md describe them; this module holds the names and
the small pure functions that each side uses, so that a change shows up in every side's tests.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

MODEL_CARD_SCHEMA: Final = "modeldeploy.dev/model-card/v1"
MODEL_FILE: Final = "model.onnx"
TFLITE_FILE: Final = "model.tflite"
MODEL_CARD_FILE: Final = "model.json"
SOURCE_DIR: Final = "source"
TMP_PREFIX: Final = ".tmp-"

ARTIFACT_MOUNT: Final = "/models"
DATA_MOUNT: Final = "/data"
USER_OUTPUT_DIR: Final = "/workspace/output"
SPEC_ENV: Final = "MODELDEPLOY_SPEC"
TERMINATION_LOG_ENV: Final = "MODELDEPLOY_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG: Final = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT: Final = 4096
FAILURE_MESSAGE_LIMIT: Final = 1024

# Pod annotations that the local cluster's kwok stages read to play a container's ending.
FAKE_RESULT_ANNOTATION: Final = "modeldeploy.dev/fake-result"
FAKE_MESSAGE_ANNOTATION: Final = "modeldeploy.dev/fake-termination-message"

FAILURE_REASONS: Final = frozenset(
    {
        "InvalidSpec",
        "InvalidData",
        "InvalidModel",
        "ParityFailed",
        "AccuracyBudgetExceeded",
        "StorageFull",
        "StorageUnavailable",
        "InternalError",
    }
)

CANDIDATE_NAMES: Final = ("fp32", "dynamic-int8", "dynamic-uint8", "dynamic-matmul", "static-qdq", "fp16")
# The artifacts a version may hold (spec.compression.formats): onnx always, tflite when asked for.
FORMATS: Final = ("onnx", "tflite")
DEFAULT_FORMATS: Final = ("onnx",)
TFLITE_CANDIDATE_NAMES: Final = ("float32", "float16", "dynamic-int8", "full-int8")


class ContractError(ValueError):
    """Something on the volume or in a report does not follow the contract; the message says what."""


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal text, and so equal hashes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def spec_hash(spec: dict[str, Any]) -> str:
    """SHA-256 of what determines the model: the training (or importModel) and compression sections."""
    relevant = {k: spec.get(k) for k in ("training", "importModel", "compression") if k in spec}
    # Pod placement does not change the model it makes, so a new node selector is not a new version.
    training = relevant.get("training")
    if isinstance(training, dict):
        relevant["training"] = {
            k: v
            for k, v in training.items()
            if k
            not in {
                "resources",
                "nodeSelector",
                "tolerations",
                "podAnnotations",
                "activeDeadlineSeconds",
                "backoffLimit",
            }
        }
    # formats came after the first versions: the default [onnx] hashes as its absence, so an existing spec keeps its
    # version (and is not retrained) when the operator that knows formats takes over.
    compression = relevant.get("compression")
    if isinstance(compression, dict) and list(compression.get("formats", DEFAULT_FORMATS)) == list(DEFAULT_FORMATS):
        relevant["compression"] = {k: v for k, v in compression.items() if k != "formats"}
    return hashlib.sha256(canonical_json(relevant).encode()).hexdigest()


def requested_formats(spec: dict[str, Any]) -> tuple[str, ...]:
    """spec.compression.formats, checked (the CRD checks it too; a spec given to `modeldeploy train` may not be)."""
    value = (spec.get("compression") or {}).get("formats", list(DEFAULT_FORMATS))
    if not isinstance(value, list) or not value or any(f not in FORMATS for f in value) or "onnx" not in value:
        raise ContractError(
            f"spec.compression.formats {value!r} is not a list of {', '.join(FORMATS)} that includes onnx; "
            "use [onnx] or [onnx, tflite]"
        )
    return tuple(f for f in FORMATS if f in value)


def model_version(spec_digest: str, data_fingerprint: str | None) -> str:
    """The version directory's name: `v` and 12 hex digits of the spec hash and the data fingerprint."""
    digest = hashlib.sha256(f"{spec_digest}:{data_fingerprint or ''}".encode()).hexdigest()
    return "v" + digest[:12]


def is_complete_version(path: Path) -> bool:
    """A version directory counts only when its rename happened and it holds both the model and its card."""
    return not path.name.startswith(".") and (path / MODEL_FILE).is_file() and (path / MODEL_CARD_FILE).is_file()


def read_model_card(version_dir: Path) -> dict[str, Any] | None:
    """The model card of a version directory, None when the directory has only model.onnx."""
    card_path = version_dir / MODEL_CARD_FILE
    if not card_path.exists():
        return None
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ContractError(f"{card_path} is not readable JSON: {err}") from err
    if not isinstance(card, dict) or card.get("schema") != MODEL_CARD_SCHEMA:
        raise ContractError(f"{card_path} is not a model card (schema must be {MODEL_CARD_SCHEMA!r})")
    return card


@dataclass(frozen=True)
class TrainingReport:
    """What the training container said in its termination message."""

    ok: bool
    fields: dict[str, Any]

    @property
    def version(self) -> str | None:
        value = self.fields.get("version")
        return value if isinstance(value, str) else None

    @property
    def reason(self) -> str:
        return str(self.fields.get("reason", "InternalError"))

    @property
    def message(self) -> str:
        return str(self.fields.get("message", ""))


def encode_report(report: dict[str, Any]) -> str:
    """The termination message for a report, within the kubelet's 4096 bytes (candidates go first, then detail)."""
    body = dict(report)
    if not body.get("ok", False):
        body["message"] = " ".join(str(body.get("message", "")).split())[:FAILURE_MESSAGE_LIMIT]
    text = canonical_json(body)
    if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
        body.pop("candidates", None)
        text = canonical_json(body)
    if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
        raise ContractError(f"report is {len(text.encode())} bytes even without candidates (limit 4096)")
    return text


def write_report(report: dict[str, Any], path: str | None = None) -> Path:
    """Write the report where the kubelet reads it (MODELDEPLOY_TERMINATION_LOG or /dev/termination-log)."""
    target = Path(path or os.environ.get(TERMINATION_LOG_ENV) or DEFAULT_TERMINATION_LOG)
    target.write_text(encode_report(report), encoding="utf-8")
    return target


def parse_report(message: str | None) -> TrainingReport:
    """Read a termination message. Anything that is not a report (a log tail, say) is a failure that quotes it."""
    text = (message or "").strip()
    if not text:
        return TrainingReport(False, {"reason": "InternalError", "message": "the training container left no report"})
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("ok"), bool):
        tail = " ".join(text.split())[-FAILURE_MESSAGE_LIMIT:]
        return TrainingReport(False, {"reason": "InternalError", "message": tail})
    if data["ok"] and not isinstance(data.get("version"), str):
        return TrainingReport(False, {"reason": "InternalError", "message": "report says ok but names no version"})
    return TrainingReport(data["ok"], data)
