"""Payload serializers: JSON by default, never pickle by default.

A serializer turns a task's ``(args, kwargs)`` and its result into bytes and
back. Anything that cannot be decoded is a poison message for the worker, so
``loads`` raises ``ValueError`` (or a subclass) on bad input and nothing else.
"""

from __future__ import annotations

import json
import json.encoder
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
        # JSONEncoder.encode builds a C encoder on every call, which costs more than
        # encoding a small payload; build it once. No circular-reference markers:
        # a cycle ends in RecursionError, reported below as the ValueError it is.
        make = json.encoder.c_make_encoder  # type: ignore[attr-defined]
        self._fast = (
            None
            if make is None  # no C accelerator (not CPython): the pure-Python path
            else make(
                None,
                self._encoder.default,
                json.encoder.encode_basestring,
                None,
                ":",
                ",",
                False,
                False,
                False,
            )
        )

    def dumps(self, value: Any) -> bytes:
        if self._fast is None:
            return self._encoder.encode(value).encode()
        try:
            return "".join(self._fast(value, 0)).encode()
        except RecursionError:
            raise ValueError("value is nested too deeply or refers to itself") from None

    def loads(self, data: bytes) -> Any:
        # UnicodeDecodeError and JSONDecodeError are both ValueErrors.
        return self._decoder.decode(data.decode())
