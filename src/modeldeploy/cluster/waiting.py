"""Waiting on a condition with a deadline and a message that says what was awaited and what was seen last."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from modeldeploy.spec import CRD_NAME

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    describe: Callable[[], object] | None = None,
) -> T:
    """Call predicate until it returns something truthy and return that; raise AssertionError at the deadline.

    The error names `what`, the time waited and the last value seen (or `describe()` when given), so a failing
    test says more than "timed out". Exceptions from the predicate propagate: a broken check is not a wait.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            seen = describe() if describe is not None else last
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last seen: {seen!r}")
        time.sleep(interval)


def wait_crd_established(kubectl_stdout: Callable[..., str], *, timeout: float = 60, name: str = CRD_NAME) -> None:
    """Wait until a CRD (the ModelDeployment's unless `name` says another) is Established, given a function that runs
    kubectl and returns stdout.

    `kubectl wait --for=condition=Established` right after an apply fails outright ("accessor error") when the CRD
    has no conditions yet, instead of waiting: seen once in a CI run.
    """
    jsonpath = 'jsonpath={.status.conditions[?(@.type=="Established")].status}'
    wait_until(
        lambda: kubectl_stdout("get", "crd", name, "-o", jsonpath).strip() == "True",
        timeout=timeout,
        what=f"CRD {name} to be established",
    )
