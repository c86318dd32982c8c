# Hand-written stub: the generated module beside it builds its classes at run time from the descriptor, so mypy sees
# its names as Any instead of type-checking generated code (protobuf ships no stubs for that).
from typing import Any

def __getattr__(name: str) -> Any: ...
