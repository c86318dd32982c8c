"""Turn the command line into a run and any outcome into a report: the one place failures become reasons."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from modeldeploy import contracts, spec
from modeldeploy_training.errors import InvalidSpec, TrainingFailure, is_storage_full, storage_failure
from modeldeploy_training.job import Options, failure_report, run_job
from modeldeploy_training.settings import Settings

log = logging.getLogger(__name__)


def read_manifest(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    try:
        if args.spec is not None:
            return spec.load_manifest(args.spec)
        text = settings.spec
        if not text:
            raise InvalidSpec(f"no spec: pass --spec FILE or set {contracts.SPEC_ENV} to the ModelDeployment's JSON")
        return spec.load_manifest_json(text)
    except spec.SpecError as err:
        raise InvalidSpec(str(err)) from err


def execute(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """The report of one run; never raises for a failed run (the report says why)."""
    try:
        manifest = read_manifest(args, settings)
        return run_job(manifest, Options(args.output, args.data_root, args.user_output))
    except TrainingFailure as failure:
        log.error("%s: %s", failure.reason, failure.message)
        return failure_report(failure)
    except OSError as err:
        # Writes of the artifact map their own errors; what reaches here may be a read as well, so only a full
        # volume is blamed on the volume.
        where = str(err.filename or "a file")
        io_failure = (
            storage_failure(err, where)
            if is_storage_full(err)
            else TrainingFailure(f"I/O error on {where}: {err.strerror or err}; see the log")
        )
        log.error("%s: %s", io_failure.reason, io_failure.message, exc_info=True)
        return failure_report(io_failure)
    except Exception as err:
        log.exception("unexpected failure")
        return failure_report(TrainingFailure(f"{type(err).__name__}: {err}; see the log, and report it as a bug"))
