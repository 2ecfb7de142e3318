"""Payload serializers: JSON by default, never pickle by default.

A serializer turns a task's ``(args, kwargs)`` and its result into bytes and
back. Anything that cannot be decoded is a poison message for the worker, so
``loads`` raises ``ValueError`` (or a subclass) on bad input and nothing else.

Nesting is bounded (``MAX_DEPTH``) both ways: a decoder's recursion depends
on how deep the caller's own stack already is, so without one fixed bound a
payload that one process encodes could crash another's decoder.

Mappings must have ``str`` keys: JSON would silently write ``{1: "a"}`` as
``{"1": "a"}``, so the handler (or the caller reading a result) would get
something other than what was sent.
"""

from __future__ import annotations

import itertools
import json
import json.encoder
import re
import reprlib
from collections.abc import Collection, Iterable
from typing import Any, NoReturn, Protocol, runtime_checkable

MAX_DEPTH = 200
"""Lists and objects nested deeper than this are refused by ``dumps`` and ``loads``."""


@runtime_checkable
class Serializer(Protocol):
    content_type: str

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class JSONSerializer:
    """Compact UTF-8 JSON; rejects NaN/Infinity, which other JSON readers cannot parse,
    and mappings with keys that are not ``str``, which JSON would turn into strings."""

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
        braces = data.count(b"{")
        check_depth(data, braces=braces)
        if braces:
            check_keys(value, braces)
        return data

    def loads(self, data: bytes) -> Any:
        check_depth(data)
        # UnicodeDecodeError and JSONDecodeError are both ValueErrors.
        try:
            return self._decoder.decode(data.decode())
        except RecursionError:
            raise ValueError(f"value is nested more than {MAX_DEPTH} levels deep") from None


def check_depth(data: bytes, limit: int = MAX_DEPTH, *, braces: int | None = None) -> None:
    """ValueError when JSON ``data`` nests lists or objects deeper than ``limit``.

    Counting brackets rules out almost every payload; the rest are measured
    with C-speed steps (strip the strings, keep the brackets, running sum).
    ``braces``: ``data.count(b"{")`` when the caller has counted already.
    """
    if data.count(b"[") + (data.count(b"{") if braces is None else braces) <= limit:
        return
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    if max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit:
        raise ValueError(f"value is nested more than {limit} levels deep")


def check_keys(value: Any, braces: int) -> None:
    """TypeError if ``value`` holds a dict with a key that is not a ``str``.

    ``braces`` is how many ``{`` its JSON encoding has: every dict writes one
    (strings may add more), so the walk ends once it has seen that many dicts;
    a payload whose only dicts are near the top costs a few steps. Keys are
    checked by ``str.join``, children sorted out by type in bulk, and a list of
    dicts (records) is checked as one batch. Call it after encoding: the value
    then has no cycle and a bounded depth.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            try:
                "".join(item)  # C speed; fails at the first key that is not a str
            except TypeError:
                _raise_bad_key((item,))
            braces -= 1
            if braces <= 0:
                return
            children: Collection[Any] = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        kinds = set(map(type, children))
        if kinds <= _SCALARS:
            continue
        if kinds == _JUST_DICT:
            try:
                "".join(itertools.chain.from_iterable(children))
            except TypeError:
                _raise_bad_key(children)
            braces -= len(children)
            if braces <= 0:
                return
            stack.append(list(itertools.chain.from_iterable(map(dict.values, children))))
        elif kinds <= _CONTAINERS:
            stack += children
        else:
            stack += [child for child in children if type(child) not in _SCALARS]


def _raise_bad_key(dicts: Iterable[dict[Any, Any]]) -> NoReturn:
    for d in dicts:
        for key in d:
            if not isinstance(key, str):
                raise TypeError(
                    f"dict keys must be str, got {type(key).__name__}: {reprlib.repr(key)}"
                ) from None
    raise AssertionError("str.join refused only str keys")  # pragma: no cover


_SCALARS = frozenset({str, int, float, bool, type(None)})
_CONTAINERS = frozenset({dict, list, tuple})
_JUST_DICT = frozenset({dict})


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1
