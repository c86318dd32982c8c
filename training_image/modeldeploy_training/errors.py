"""The typed failures of a training run; each maps to one reason of the training Job's report."""

from __future__ import annotations

import errno

from modeldeploy import contracts


class TrainingFailure(Exception):
    """A run that cannot produce an artifact. `reason` is one of contracts.FAILURE_REASONS; the message says what
    was wrong and what to do, in one line."""

    reason = "InternalError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        assert self.reason in contracts.FAILURE_REASONS, self.reason

    @property
    def message(self) -> str:
        return str(self)


class InvalidSpec(TrainingFailure):
    reason = "InvalidSpec"


class InvalidData(TrainingFailure):
    reason = "InvalidData"


class InvalidModel(TrainingFailure):
    reason = "InvalidModel"


class ParityFailed(TrainingFailure):
    reason = "ParityFailed"


class AccuracyBudgetExceeded(TrainingFailure):
    reason = "AccuracyBudgetExceeded"


class StorageFull(TrainingFailure):
    reason = "StorageFull"


class StorageUnavailable(TrainingFailure):
    """Object storage (spec.storage.uri, a dataset or import URI) refused, lacked or could not be reached."""

    reason = "StorageUnavailable"


# Out of space and out of quota look the same to a user: the volume cannot take the artifact.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def is_storage_full(err: OSError) -> bool:
    return err.errno in _FULL_ERRNOS


def storage_failure(err: OSError, where: str) -> TrainingFailure:
    """The failure for an OSError met while writing `where`: StorageFull for a full volume, else InternalError."""
    if is_storage_full(err):
        return StorageFull(
            f"no space left writing {where} ({err.strerror}); free space on the artifact volume or give it a larger "
            "claim (spec.storage), then retry"
        )
    return TrainingFailure(f"cannot write {where}: {err.strerror or err}; check that the artifact volume is writable")
