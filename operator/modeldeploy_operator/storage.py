"""The one module that talks to the Kubernetes API: raw REST over the kubernetes client's connection and auth.

API errors become the exceptions below, so the layers above never see an HTTP status.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
from collections.abc import Callable
from typing import Any, Final

from modeldeploy.spec import GROUP, PLURAL, VERSION

logger = logging.getLogger(__name__)

# kind -> (API path prefix, plural) for every kind the operator writes.
PATHS: Final[dict[str, tuple[str, str]]] = {
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Service": ("/api/v1", "services"),
    "Pod": ("/api/v1", "pods"),
    "Job": ("/apis/batch/v1", "jobs"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "HTTPRoute": ("/apis/gateway.networking.k8s.io/v1", "httproutes"),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases"),
    "Event": ("/apis/events.k8s.io/v1", "events"),
    "ModelDeployment": (f"/apis/{GROUP}/{VERSION}", PLURAL),
}


# Lists that only need names and uids ask for metadata alone (what controller-runtime's metadata-only caches use).
METADATA_LIST: Final = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
LIST_PAGE: Final = 100


class StorageError(Exception):
    """An API request failed; the message says which and what the server answered."""

    def __init__(
        self, message: str, status: int = 0, reason: str = "", api_message: str = "", retry_after: float = 0.0
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.api_message = api_message or message
        """What the API server said (its Status message), for the ModelDeployment's conditions."""
        self.retry_after = retry_after
        """Seconds the server asked the client to wait (Retry-After of a 429 or 503), else 0."""


class NotFoundError(StorageError):
    """The object does not exist (any more)."""


class ConflictError(StorageError):
    """The object exists already, or changed since it was read (resourceVersion conflict)."""


class TransientError(StorageError):
    """The API server is unreachable, overloaded or timed out: retry later."""


class FencedError(StorageError):
    """A write refused in this process because it can no longer prove that it holds the leader Lease."""


def _retry_after(headers: Any) -> float:
    try:
        value = float((headers or {}).get("Retry-After") or 0)
    except (TypeError, ValueError):
        return 0.0
    return min(max(value, 0.0), 300.0)


class Kube:
    """A thin client: JSON in, JSON out, one kind of exception per outcome that the callers tell apart."""

    def __init__(self, api_client: Any, field_manager: str, timeout: float = 5.0) -> None:
        self._api = api_client
        self.field_manager = field_manager
        self._timeout = timeout or 5.0  # 0: Settings built directly, without settings_from_env
        self.may_write: Callable[[], bool] = lambda: True
        """Checked before every write: the leader elector's fence (False once leadership cannot be proven)."""
        self._calls: collections.Counter[str] = collections.Counter()
        self._calls_lock = threading.Lock()

    def calls(self) -> dict[str, int]:
        """Requests made so far by "METHOD resource[/subresource]", e.g. "PATCH modeldeployments/status"."""
        with self._calls_lock:
            return dict(self._calls)

    def _count(self, method: str, path: str) -> None:
        parts = path.strip("/").split("/")
        at = parts.index("namespaces") + 2 if "namespaces" in parts else len(parts) - 1
        what = "/".join(parts[at : at + 1] + parts[at + 2 : at + 3])
        with self._calls_lock:
            self._calls[f"{method} {what}"] += 1

    def close(self) -> None:
        self._api.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        if method != "GET" and not self.may_write():
            raise FencedError(f"{method} {path}: refused, this process no longer holds the leader Lease")
        status, data, headers = self._call(method, path, body=body, query=query, content_type=content_type)
        return self._parsed(method, path, status, data or b"{}", headers)

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> tuple[int, bytes, Any]:
        from kubernetes.client.exceptions import ApiException  # noqa: PLC0415 (kept off the import path)
        from urllib3.exceptions import HTTPError  # noqa: PLC0415

        headers = {"Accept": accept, "Content-Type": content_type}
        # The client serializes a dict for JSON content types; an apply patch (YAML) must be given as text.
        payload = body if body is None or "json" in content_type else json.dumps(body)
        params = list((query or {}).items())
        self._count(method, path)
        try:
            method, url, headers, _, _ = self._api.param_serialize(
                method=method,
                resource_path=path,
                query_params=params,
                header_params=headers,
                auth_settings=["BearerToken"],
            )
            response = self._api.call_api(
                method, url, header_params=headers, body=payload, _request_timeout=self._timeout
            )
            response.read()
            status = int(response.status)
            data = bytes(response.data or b"")
            headers = response.getheaders() if hasattr(response, "getheaders") else {}
        except ApiException as err:
            raise TransientError(f"{method} {path}: {err.reason}", 0) from err
        except (OSError, HTTPError) as err:
            raise TransientError(f"{method} {path}: {err}") from err
        return status, data, headers

    def read_pod_text(self, namespace: str, pod: str, port: int, path: str, max_bytes: int = 1 << 20) -> str:
        """GET `path` on a pod's port through the API server (pods/proxy): the serving pods' /metrics, read without
        a route from the operator to the pod network. Raises StorageError when it cannot be read whole."""
        where = f"{self.path('Pod', namespace, f'{pod}:{port}', 'proxy')}/{path.lstrip('/')}"
        status, data, headers = self._call("GET", where, accept="text/plain")
        if not 200 <= status < 300:
            self._parsed("GET", where, status, data, headers)
        if len(data) > max_bytes:
            raise StorageError(f"GET {where}: answer over {max_bytes} bytes", status)
        return data.decode(errors="replace")

    def _parsed(self, method: str, path: str, status: int, data: bytes, headers: Any) -> dict[str, Any]:
        """The JSON answer of a 2xx; an exception of the kind the status says otherwise."""
        try:
            parsed = json.loads(data) if data else {}
        except json.JSONDecodeError:
            parsed = {"message": data.decode(errors="replace")[:500]}
        if 200 <= status < 300:
            return parsed if isinstance(parsed, dict) else {}
        api_message = str(parsed.get("message", ""))[:1000]
        message = f"{method} {path}: {status} {api_message}"
        reason = str(parsed.get("reason", ""))
        if status == 404:
            raise NotFoundError(message, status, reason, api_message)
        if status == 409:
            raise ConflictError(message, status, reason, api_message)
        if status in (429, 500, 502, 503, 504) or status == 0:
            raise TransientError(message, status, reason, api_message, _retry_after(headers))
        raise StorageError(message, status, reason, api_message)

    @staticmethod
    def path(kind: str, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        """The object's (or, without a name, the collection's) path; an empty namespace means all namespaces."""
        prefix, plural = PATHS[kind]
        out = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
        if name:
            out += f"/{name}"
        if subresource:
            out += f"/{subresource}"
        return out

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        return self.request("GET", self.path(kind, namespace, name))

    def list(self, kind: str, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector} if label_selector else None
        items = self.request("GET", self.path(kind, namespace), query=query).get("items") or []
        return [item for item in items if isinstance(item, dict)]

    def list_uids(self, kind: str, namespace: str, label_selector: str = "") -> set[str]:
        """The uids of the objects of `kind` in `namespace` ("": all namespaces) that carry the labels. Read as
        metadata only (PartialObjectMetadataList) in pages of LIST_PAGE, so that a check of thousands of pods
        stays a few small answers."""
        path = self.path(kind, namespace)
        uids: set[str] = set()
        token = ""
        while True:
            query = {"limit": str(LIST_PAGE)}
            query.update({"labelSelector": label_selector} if label_selector else {})
            query.update({"continue": token} if token else {})
            status, data, headers = self._call("GET", path, query=query, accept=METADATA_LIST)
            page = self._parsed("GET", path, status, data, headers)
            for item in page.get("items") or []:
                uid = ((item or {}).get("metadata") or {}).get("uid") if isinstance(item, dict) else None
                if uid:
                    uids.add(str(uid))
            token = str((page.get("metadata") or {}).get("continue") or "")
            if not token:
                return uids

    def create(self, manifest: dict[str, Any]) -> bool:
        """Create the object; False when it exists already (a re-run finds what an earlier one made)."""
        namespace = manifest["metadata"]["namespace"]
        try:
            self.request(
                "POST",
                self.path(manifest["kind"], namespace),
                body=manifest,
                query={"fieldManager": self.field_manager},
            )
        except ConflictError:
            return False
        return True

    def post_event(self, event: dict[str, Any]) -> None:
        """Create an events.k8s.io/v1 Event (builders.build_event: its name is unique, so it never conflicts)."""
        self.request("POST", self.path("Event", event["metadata"]["namespace"]), body=event)

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply with the operator's field manager, taking over fields others changed (drift)."""
        meta = manifest["metadata"]
        return self.request(
            "PATCH",
            self.path(manifest["kind"], meta["namespace"], meta["name"]),
            body=manifest,
            query={"fieldManager": self.field_manager, "force": "true"},
            content_type="application/apply-patch+yaml",
        )

    def strategic_patch(self, kind: str, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """A strategic merge patch (built-in kinds only): keyed lists merge by key, and a `{"$patch": "replace"}`
        item in a list replaces that one list whole."""
        return self.request(
            "PATCH",
            self.path(kind, namespace, name),
            body=body,
            query={"fieldManager": self.field_manager},
            content_type="application/strategic-merge-patch+json",
        )

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete with background propagation (pods of a Job go too); False when it was gone already."""
        try:
            self.request(
                "DELETE",
                self.path(kind, namespace, name),
                body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
            )
        except NotFoundError:
            return False
        return True

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the ModelDeployment's status through the status subresource (never its spec)."""
        return self.request(
            "PATCH",
            self.path("ModelDeployment", namespace, name, "status"),
            body={"status": status},
            query={"fieldManager": self.field_manager},
            content_type="application/merge-patch+json",
        )

    def replace(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        return self.request("PUT", self.path(manifest["kind"], meta["namespace"], meta["name"]), body=manifest)


def connect(field_manager: str, pool_size: int, timeout: float = 5.0) -> Kube:
    """A client for the cluster of KUBECONFIG (or the pod's service account in a cluster)."""
    from kubernetes import client, config  # noqa: PLC0415

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = pool_size
    return Kube(client.ApiClient(configuration), field_manager, timeout)
