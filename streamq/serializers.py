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
import math
import re
import reprlib
from collections.abc import Collection, Iterable
from typing import Any, NoReturn, Protocol, runtime_checkable

import msgspec

MAX_DEPTH = 200
"""Lists and objects nested deeper than this are refused by ``dumps`` and ``loads``."""


@runtime_checkable
class Serializer(Protocol):
    content_type: str

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class JSONSerializer:
    """Compact UTF-8 JSON through msgspec, with the types a real payload holds.

    ``datetime``, ``date``, ``time``, ``UUID``, ``Decimal``, enums, dataclasses,
    ``TypedDict``s, msgspec Structs and (when installed) pydantic models encode
    as their JSON forms; the worker decodes them back into the handler's
    annotated types (``streamq.typed``). Refused with a ``TypeError``/``ValueError``:
    other objects, NaN and Infinity (msgspec would write ``null``, and other JSON
    readers cannot parse them as numbers), and mappings whose keys are not
    ``str`` (JSON would turn them into strings).
    """

    content_type = "json"

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder(enc_hook=_encode_other)
        self._decoder = msgspec.json.Decoder()

    def dumps(self, value: Any) -> bytes:
        if value is None:  # a handler that returns nothing: most of them
            return b"null"
        try:
            data = self._encoder.encode(value)
        except RecursionError:
            raise ValueError(
                f"value is nested more than {MAX_DEPTH} levels deep or refers to itself"
            ) from None
        if b"null" in data and _has_non_finite(value):  # NaN and Infinity encode as null
            raise ValueError("Out of range float values are not JSON compliant (NaN, Infinity)")
        braces = data.count(b"{")
        check_depth(data, braces=braces)
        if braces:
            check_keys(value, braces)
        return data

    def loads(self, data: bytes) -> Any:
        check_depth(data)
        # msgspec.DecodeError (invalid JSON or UTF-8) is a ValueError.
        try:
            return self._decoder.decode(data)
        except RecursionError:
            raise ValueError(f"value is nested more than {MAX_DEPTH} levels deep") from None


def _encode_other(value: Any) -> Any:
    """msgspec's hook for types it does not know: pydantic models, else a TypeError."""
    if value is None or isinstance(value, bool):  # only a key reaches here with these
        raise TypeError(f"dict keys must be str, got {type(value).__name__}: {value!r}")
    dump = getattr(value, "model_dump", None)
    if callable(dump) and hasattr(type(value), "model_fields"):
        return dump(mode="json")
    raise TypeError(f"objects of type {type(value).__qualname__} cannot be encoded")


def _has_non_finite(value: Any) -> bool:
    """Whether a NaN or an infinity hides anywhere in ``value`` (a slow walk, run only
    when the encoding has a ``null`` that one could have become)."""
    stack = [msgspec.to_builtins(value, enc_hook=_encode_other)]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


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
