"""The Open Inference Protocol's requests and responses as typed values, independent of REST or gRPC."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy.typing as npt

Parameters: TypeAlias = dict[str, Any]
Array: TypeAlias = npt.NDArray[Any]


@dataclass(frozen=True)
class TensorMetadata:
    """A model input or output as the protocol describes it: shape with -1 for a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class InferInput:
    """One input tensor of a request, already decoded to an array of its declared datatype and shape."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Array


@dataclass
class RequestedOutput:
    """An output the client asked for. `binary` None means "the request's default"; `classification` 0 means raw."""

    name: str
    binary: bool | None = None
    classification: int = 0


@dataclass
class InferRequest:
    """A decoded inference request; `outputs` None means every output of the model."""

    inputs: list[InferInput]
    outputs: list[RequestedOutput] | None = None
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)
    binary_outputs: bool = False
    """The request-wide default for outputs (the binary extension's `binary_data_output`)."""


@dataclass
class InferOutput:
    """One output tensor of a response."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Array
    binary: bool = False


@dataclass
class InferResponse:
    """The answer to one InferRequest."""

    model_name: str
    model_version: str
    outputs: list[InferOutput]
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)
