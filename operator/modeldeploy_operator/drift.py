"""Drift, pure: does an observed child still carry every field the operator sets, with the value it sets?

The operator owns the fields of its built manifests (server-side apply, one field manager). A child has drifted
when one of those fields is missing or holds another value. Everything else is left alone and is no drift: fields
the API server defaults, labels and annotations other tools add, list items others add to a keyed list (an env
var, a volume), an HPA's replicas (the operator leaves `replicas` out of the manifest then). So a repair writes
only when something the operator owns changed, and an idle model costs no write.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Final

# Keys that identify an item of a keyed list (x-kubernetes-list-type: map) in the manifests the operator builds.
LIST_KEYS: Final = ("name", "mountPath", "containerPort", "uid")
# Maps the API server treats as one value (x-kubernetes-map-type: atomic): an added key is drift too.
ATOMIC_MAPS: Final = frozenset({("spec", "selector")})
# A strategic merge patch's directive (an item of a list) that replaces that list whole.
REPLACE_LIST: Final = {"$patch": "replace"}
# Where a drift in a container's ports starts: spec.template.spec.containers[name=serving].ports...
_CONTAINER_PORTS = re.compile(r"^spec\.template\.spec\.(containers|initContainers)\[name=([^\]]+)\]\.ports(?:[.\[]|$)")

_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_SUFFIX: Final = {
    None: Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}


def quantity(value: str) -> Decimal | None:
    """A Kubernetes quantity's value ("500m" -> 0.5, "1Gi" -> 1073741824), or None if it is not one."""
    match = _QUANTITY.match(value)
    if match is None:
        return None
    try:
        return Decimal(match.group(1)) * _SUFFIX[match.group(2)]
    except InvalidOperation:
        return None


def _same_scalar(want: Any, have: Any) -> bool:
    if want == have:
        return True
    # The API server rewrites quantities in canonical form ("0.5" -> "500m", "1024Mi" -> "1Gi").
    if isinstance(want, str) and isinstance(have, str):
        a, b = quantity(want), quantity(have)
        return a is not None and a == b
    return False


def _key_of(items: list[Any]) -> str | None:
    for key in LIST_KEYS:
        if all(isinstance(item, Mapping) and key in item for item in items):
            return key
    return None


def _join(path: tuple[str, ...]) -> str:
    return "".join(part if part.startswith("[") else f".{part}" for part in path).lstrip(".") or "."


def first_drift(want: Any, have: Any, path: tuple[str, ...] = ()) -> str:
    """The first path where `have` lacks or changed what `want` sets ("" when `have` carries all of `want`)."""
    where = _join(path)
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            return where
        if path[-2:] in ATOMIC_MAPS and set(have) != set(want):
            return where
        for key, value in want.items():
            if key not in have:
                if value in ({}, [], None):
                    continue  # the API server stores an empty map or list as nothing at all
                return _join((*path, str(key)))
            found = first_drift(value, have[key], (*path, str(key)))
            if found:
                return found
        return ""
    if isinstance(want, list):
        if not isinstance(have, list):
            return where
        key = _key_of(want) if want else None
        if key is not None:
            by_key = {item.get(key): item for item in have if isinstance(item, Mapping)}
            for item in want:
                name = item[key]
                if name not in by_key:
                    return f"{where}[{key}={name}]"
                found = first_drift(item, by_key[name], (*path, f"[{key}={name}]"))
                if found:
                    return found
            return ""
        # An atomic list (args, tolerations, metrics): the same items in the same order.
        if len(want) != len(have):
            return where
        for index, (a, b) in enumerate(zip(want, have, strict=True)):
            found = first_drift(a, b, (*path, f"[{index}]"))
            if found:
                return found
        return ""
    return "" if _same_scalar(want, have) else where


def owned_view(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the watch keeps of a child for the drift check: its metadata that the operator sets, and its spec."""
    meta = obj.get("metadata") or {}
    return {
        "metadata": {k: meta[k] for k in ("labels", "annotations", "ownerReferences") if k in meta},
        "spec": obj.get("spec") or {},
    }


def drift_of(manifest: Mapping[str, Any], view: Mapping[str, Any] | None, *, metadata_only: bool = False) -> str:
    """Where the observed child (its `owned_view`) departs from the built manifest, "" when it does not."""
    if view is None:
        return "."
    meta = manifest.get("metadata") or {}
    want: dict[str, Any] = {
        "metadata": {k: meta[k] for k in ("labels", "annotations", "ownerReferences") if meta.get(k)},
    }
    if not metadata_only:
        want["spec"] = manifest.get("spec") or {}
    return first_drift(want, view)


def ports_repair(manifest: Mapping[str, Any], where: str) -> dict[str, Any] | None:
    """The strategic merge patch that puts back a ports list whose item was edited (`where`: from `drift_of`), else
    None.

    A port's number is part of its list key (a container's containerPort and protocol, a Service's port and
    protocol). After a hand edit of the number, server-side apply would add the operator's port beside the edited
    one: two ports of the same name, which the API server refuses (422) on every retry. So the repair first
    replaces that one list (a Service's ports, or the ports of the one container named in `where`); the apply
    that follows finds them right. Other containers and the rest of the object are left as they are.
    """
    kind, spec = manifest.get("kind"), manifest.get("spec") or {}
    if kind == "Service" and (where == "spec.ports" or where.startswith(("spec.ports.", "spec.ports["))):
        return {"spec": {"ports": [*spec["ports"], REPLACE_LIST]}}
    match = _CONTAINER_PORTS.match(where)
    if match is None or kind != "Deployment":
        return None
    field, name = match.groups()
    containers = (spec.get("template") or {}).get("spec", {}).get(field) or []
    container = next((c for c in containers if c.get("name") == name), None)
    if container is None or not container.get("ports"):
        return None
    return {"spec": {"template": {"spec": {field: [{"name": name, "ports": [*container["ports"], REPLACE_LIST]}]}}}}
