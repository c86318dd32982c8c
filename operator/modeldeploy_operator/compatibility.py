"""The oldest Kubernetes whose API takes everything the operator and its CRD use (REQUIREMENTS says what and since
when; docs/api-reference.md and the README show it), and the check at startup that refuses an older API server with
a message instead of failing later, object by object.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Protocol

logger = logging.getLogger(__name__)

MINIMUM = (1, 30)
"""The oldest Kubernetes (major, minor) supported."""

REASON = "the inference pods' preStop sleep action is on by default from Kubernetes 1.30"

REQUIREMENTS = (
    "the inference pods' `lifecycle.preStop.sleep` (whenever `spec.serving.drainSeconds` > 0, 15 by default): "
    "KEP-3960, alpha in 1.29, beta and on by default in **1.30**, GA in 1.34",
    "the CRD's CEL rules (`x-kubernetes-validations`): beta and on by default in 1.25, GA in 1.29; the `quantity()` "
    "library they use for limits >= requests: in new rules from 1.29; the transition rule `self == oldSelf`: 1.25",
    "the training Job's `podFailurePolicy` (`onExitCodes`, the `DisruptionTarget` condition): beta and on by default "
    "in 1.26, GA in 1.31",
    "`autoscaling/v2` HorizontalPodAutoscalers: 1.23; server-side apply: 1.22; Pod Security admission: 1.25",
)
"""What sets MINIMUM: each field or feature the operator's objects use, with the releases where it arrived."""


class UnsupportedKubernetes(RuntimeError):
    """The API server is older than MINIMUM; the message says what it is, what is needed and why."""


class _Requester(Protocol):
    def request(self, method: str, path: str) -> dict[str, Any]: ...


def parse_server_version(info: Mapping[str, Any]) -> tuple[int, int] | None:
    """(major, minor) from the API server's `GET /version`; None when it does not say (a development build).

    Managed clusters report a minor like "30+" (GKE, EKS) and a gitVersion like "v1.30.4-eks-a737599".
    """
    major = re.match(r"\d+", str(info.get("major", "")))
    minor = re.match(r"\d+", str(info.get("minor", "")))
    if major and minor:
        found = (int(major.group()), int(minor.group()))
    else:
        git = re.match(r"v?(\d+)\.(\d+)", str(info.get("gitVersion", "")))
        if git is None:
            return None
        found = (int(git.group(1)), int(git.group(2)))
    return None if found == (0, 0) else found  # v0.0.0-master: built without version stamps


def check_server_version(info: Mapping[str, Any]) -> str:
    """The server's version as it names itself, when it is supported; UnsupportedKubernetes when it is older."""
    name = str(info.get("gitVersion") or f"{info.get('major', '?')}.{info.get('minor', '?')}")
    found = parse_server_version(info)
    if found is not None and found < MINIMUM:
        raise UnsupportedKubernetes(
            f"the API server runs Kubernetes {name}; modeldeploy needs {MINIMUM[0]}.{MINIMUM[1]} or newer "
            f"({REASON}; the README's 'Supported versions' lists the rest). Upgrade the cluster's control plane, "
            "or run the operator against a newer cluster"
        )
    return name


def is_supported_server(kube: _Requester) -> bool:
    """At startup: read `/version` (readable by every client, no RBAC needed); False, with the reason logged at
    ERROR, when the API server is older than MINIMUM.

    A server that cannot be reached, or that does not say its version, is let through with a warning: the operator's
    own retries deal with an unreachable server as before.
    """
    from modeldeploy_operator.storage import StorageError  # noqa: PLC0415 (storage imports the API client)

    try:
        info = kube.request("GET", "/version")
    except StorageError as err:
        logger.warning("could not read the API server's version (%s); the minimum %d.%d is not checked", err, *MINIMUM)
        return True
    try:
        name = check_server_version(info)
    except UnsupportedKubernetes as err:
        logger.error("cannot start: %s", err)
        return False
    if parse_server_version(info) is None:
        logger.warning("the API server does not say its version (%s); the minimum %d.%d is not checked", name, *MINIMUM)
    else:
        logger.info("the API server runs Kubernetes %s (%d.%d or newer is needed)", name, *MINIMUM)
    return True
