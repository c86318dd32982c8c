"""Admission: each input of a request is checked against the model's declared inputs before any array of its size
exists, so that a hostile shape costs microseconds and no memory. The decoders call `Admission.tensor` with the
name, datatype and shape from the request's header, then decode only what passed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modeldeploy_serving.codecs import check_shape
from modeldeploy_serving.errors import InvalidInput, Overloaded
from modeldeploy_serving.types import TensorMetadata

Admit = Callable[[str, str, Any], tuple[int, ...]]
"""(name, datatype, shape as sent) -> the shape as a tuple, or InvalidInput saying what the model needs."""


class Admission:
    """The model's inputs and the request bounds; `tensor` admits one input of one request."""

    def __init__(
        self, inputs: tuple[TensorMetadata, ...], *, dynamic_batch: bool, max_rows: int, max_elements: int
    ) -> None:
        self._specs = {t.name: t for t in inputs}
        self._dynamic_batch = dynamic_batch
        self._max_rows = max_rows
        self._max_elements = max_elements
        self.max_json_values = _max_values(inputs, max_rows) if dynamic_batch else None
        """How many JSON values a request body can hold for this model (None: no bound from the model), so that a
        body of more is refused before it is parsed: a value costs 24 to 40 bytes once parsed."""

    def tensor(self, name: str, datatype: str, raw_shape: Any) -> tuple[int, ...]:
        spec = self._specs.get(name)
        if spec is None:
            raise InvalidInput(f"unknown input {name!r}; the model's inputs are {sorted(self._specs)}")
        if datatype != spec.datatype:
            raise InvalidInput(f"input {name!r} has datatype {datatype}, the model needs {spec.datatype}")
        shape = check_shape(name, raw_shape)
        if not fits(shape, spec.shape):
            raise InvalidInput(
                f"input {name!r} has shape {list(shape)}, the model needs {list(spec.shape)} (-1: any size)"
            )
        if 0 in shape:
            raise InvalidInput(f"input {name!r} has shape {list(shape)}: no dimension may be 0")
        if self._dynamic_batch and shape[0] > self._max_rows:
            raise InvalidInput(
                f"input {name!r} has {shape[0]} rows; this server takes at most {self._max_rows} per request "
                "(MODELDEPLOY_MAX_REQUEST_ROWS): send them in several requests"
            )
        count = 1
        for dim in shape:
            count *= dim
            if count > self._max_elements:
                # Every element takes at least one byte of any body; no overflow either: Python ints, checked early.
                raise InvalidInput(
                    f"input {name!r} has shape {list(shape)}: more elements than a request body of at most "
                    f"{self._max_elements} bytes can carry"
                )
        return shape


# Values a request body may hold beyond the inputs' data: ids, parameters, outputs, and room for mistakes that
# deserve their own message.
_JSON_SLACK = 4096


def _max_values(inputs: tuple[TensorMetadata, ...], max_rows: int) -> int | None:
    total = _JSON_SLACK
    for spec in inputs:
        per_row = 1
        for dim in spec.shape[1:]:
            if dim < 0:
                return None  # a dynamic dimension beyond the batch: only the body's size bounds it
            per_row *= dim
        total += max_rows * per_row
    return total


def fits(shape: tuple[int, ...], declared: tuple[int, ...]) -> bool:
    """Whether `shape` has the rank of the model's `declared` shape and its size wherever that is fixed (not -1).
    A plain loop: this runs for every input of every request."""
    if len(shape) != len(declared):
        return False
    for want, got in zip(declared, shape):  # noqa: B905, SIM110 - lengths checked above; no generator
        if want not in (got, -1):
            return False
    return True


def admit_any(name: str, datatype: str, raw_shape: Any) -> tuple[int, ...]:
    """No model to check against (pure decoding, tests): the shape's form only."""
    del datatype
    return check_shape(name, raw_shape)


class ByteBudget:
    """Request bytes held at once (bodies being read, decoded, or run): a body that would go over is shed before it
    is read, so that many large requests at once cannot take more memory than the budget. Used on the event loop
    only (REST and gRPC share it), so no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> None:
        if self.held + size > self.limit:
            raise Overloaded(
                f"the server holds {self.held} bytes of requests (at most {self.limit}, MODELDEPLOY_MAX_DECODING_BYTES)"
                f"; a body of {size} bytes must wait: retry later",
                reason="memory",
            )
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size
