"""Payload serializers: JSON by default, never pickle by default.

A serializer turns a task's ``(args, kwargs)`` and its result into bytes and
back. Anything that cannot be decoded is a poison message for the worker, so
``loads`` raises ``ValueError`` (or a subclass) on bad input and nothing else.

Nesting is bounded (``MAX_DEPTH``) both ways: a decoder's recursion depends
on how deep the caller's own stack already is, so without one fixed bound a
payload that one process encodes could crash another's decoder.
"""

from __future__ import annotations

import itertools
import json
import json.encoder
import re
from typing import Any, Protocol, runtime_checkable

MAX_DEPTH = 200
"""Lists and objects nested deeper than this are refused by ``dumps`` and ``loads``."""


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
        try:
            if self._fast is None:
                data = self._encoder.encode(value).encode()
            else:
                data = "".join(self._fast(value, 0)).encode()
        except RecursionError:
            raise ValueError(
                f"value is nested more than {MAX_DEPTH} levels deep or refers to itself"
            ) from None
        check_depth(data)
        return data

    def loads(self, data: bytes) -> Any:
        check_depth(data)
        # UnicodeDecodeError and JSONDecodeError are both ValueErrors.
        try:
            return self._decoder.decode(data.decode())
        except RecursionError:
            raise ValueError(f"value is nested more than {MAX_DEPTH} levels deep") from None


def check_depth(data: bytes, limit: int = MAX_DEPTH) -> None:
    """ValueError when JSON ``data`` nests lists or objects deeper than ``limit``.

    Counting brackets rules out almost every payload; the rest are measured
    with C-speed steps (strip the strings, keep the brackets, running sum).
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    if max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit:
        raise ValueError(f"value is nested more than {limit} levels deep")


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1
