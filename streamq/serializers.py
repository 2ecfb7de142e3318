"""Payload serializers: JSON by default, never pickle by default.

A serializer turns a task's ``(args, kwargs)`` and its result into bytes and
back. Anything that cannot be decoded is a poison message for the worker, so
``loads`` raises ``ValueError`` (or a subclass) on bad input and nothing else.
"""

from __future__ import annotations

import json
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Serializer(Protocol):
    content_type: str

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class JSONSerializer:
    """Compact UTF-8 JSON; rejects NaN/Infinity, which other JSON readers cannot parse."""

    content_type = "json"

    def __init__(self) -> None:
        self._encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        self._decoder = json.JSONDecoder()

    def dumps(self, value: Any) -> bytes:
        return self._encoder.encode(value).encode()

    def loads(self, data: bytes) -> Any:
        # UnicodeDecodeError and JSONDecodeError are both ValueErrors.
        return self._decoder.decode(data.decode())
