"""Turn the command line into a run and any outcome into a report: the one place failures become reasons."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from modeldeploy import contracts, spec
from modeldeploy_training.errors import InvalidSpec, TrainingFailure, storage_failure
from modeldeploy_training.job import Options, failure_report, run_job

log = logging.getLogger(__name__)


def read_manifest(args: argparse.Namespace) -> dict[str, Any]:
    try:
        if args.spec is not None:
            return spec.load_manifest(args.spec)
        text = os.environ.get(contracts.SPEC_ENV)
        if not text:
            raise InvalidSpec(f"no spec: pass --spec FILE or set {contracts.SPEC_ENV} to the ModelDeployment's JSON")
        return spec.load_manifest_json(text)
    except spec.SpecError as err:
        raise InvalidSpec(str(err)) from err


def execute(args: argparse.Namespace) -> dict[str, Any]:
    """The report of one run; never raises for a failed run (the report says why)."""
    try:
        manifest = read_manifest(args)
        return run_job(manifest, Options(args.output, args.data_root, args.user_output))
    except TrainingFailure as failure:
        log.error("%s: %s", failure.reason, failure.message)
        return failure_report(failure)
    except OSError as err:
        full = storage_failure(err, err.filename or "the artifact")
        log.error("%s: %s", full.reason, full.message, exc_info=True)
        return failure_report(full)
    except Exception as err:
        log.exception("unexpected failure")
        return failure_report(TrainingFailure(f"{type(err).__name__}: {err}; see the log, and report it as a bug"))
