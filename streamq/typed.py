"""Typed payloads: arguments and results decoded into the handler's annotations.

JSON carries a ``datetime`` as a string and a dataclass as an object; the
handler declared what it wants, so the worker converts each argument into
its parameter's annotation (msgspec's ``convert``, strict: a string where
an ``int`` is declared stays an error), and ``job.result()`` converts the
result into the return annotation. Only annotations that hold such a type
somewhere (``datetime``, ``date``, ``time``, ``timedelta``, ``UUID``,
``Decimal``, enums, dataclasses, ``TypedDict``s, msgspec Structs, pydantic
models, ``set``/``frozenset``/``tuple``/``bytes``) are converted: a plain
``str``/``int``/``list``/``dict`` argument costs nothing, and an annotation
msgspec does not know (a Protocol, a custom class) is passed through as
decoded, as before.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import functools
import inspect
import typing
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

_LEAVES: tuple[type, ...] = (
    dt.datetime, dt.date, dt.time, dt.timedelta, uuid.UUID, decimal.Decimal,
    enum.Enum, msgspec.Struct, bytes, bytearray, set, frozenset, tuple,
)  # fmt: skip


def needs_conversion(hint: Any, _seen: frozenset[int] = frozenset()) -> bool:
    """Whether JSON's builtins must be converted to give a value of type ``hint``."""
    if id(hint) in _seen:
        return False
    seen = _seen | {id(hint)}
    origin = typing.get_origin(hint)
    if origin is not None:
        if isinstance(origin, type) and issubclass(origin, (set, frozenset, tuple)):
            return True
        return any(needs_conversion(arg, seen) for arg in typing.get_args(hint))
    if not isinstance(hint, type):
        return False
    if issubclass(hint, _LEAVES) or dataclasses.is_dataclass(hint) or _is_pydantic(hint):
        return True
    if typing.is_typeddict(hint):
        hints = typing.get_type_hints(hint)
        return any(needs_conversion(value, seen) for value in hints.values())
    return False


def _is_pydantic(cls: type) -> bool:
    return callable(getattr(cls, "model_validate", None)) and hasattr(cls, "model_fields")


def _decode_other(cls: type, value: Any) -> Any:
    """msgspec's hook for types it does not know: pydantic models validate themselves."""
    if _is_pydantic(cls):
        return cls.model_validate(value)  # type: ignore[attr-defined]
    raise NotImplementedError(cls)


def convert(value: Any, hint: Any) -> Any:
    """``value`` (JSON builtins) as ``hint``; msgspec.ValidationError (a ValueError) if not."""
    return msgspec.convert(value, hint, strict=True, dec_hook=_decode_other)


@dataclasses.dataclass(frozen=True, slots=True)
class Conversions:
    """For one handler: which parameters (and the result) need converting, to what."""

    positional: tuple[tuple[int, Any], ...]
    """(index in the positional arguments, annotation)"""
    keyword: Mapping[str, Any]
    var_positional: Any | None
    var_keyword: Any | None
    result: Any | None

    @property
    def arguments(self) -> bool:
        return bool(self.positional or self.keyword or self.var_positional or self.var_keyword)

    def convert_arguments(
        self, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """The arguments converted to the handler's annotations (ValueError if one does not fit)."""
        out_args, out_kwargs = list(args), dict(kwargs)
        covered = 0
        for index, hint in self.positional:
            if index < len(out_args):
                out_args[index] = convert(out_args[index], hint)
            covered = max(covered, index + 1)
        if self.var_positional is not None:
            for index in range(covered, len(out_args)):
                out_args[index] = convert(out_args[index], self.var_positional)
        for name, value in kwargs.items():
            hint = self.keyword.get(name, self.var_keyword)
            if hint is not None:
                out_kwargs[name] = convert(value, hint)
        return out_args, out_kwargs


@functools.cache
def conversions(handler: Callable[..., Any]) -> Conversions:
    """What ``handler``'s annotations ask of its arguments and result (cached per handler:
    type hints are resolved on first use, when forward references have been defined)."""
    try:
        hints = typing.get_type_hints(handler)
    except Exception:  # an annotation that cannot be resolved: take the values as decoded
        hints = {}
    positional: list[tuple[int, Any]] = []
    keyword: dict[str, Any] = {}
    var_positional = var_keyword = None
    params = inspect.signature(handler).parameters.values()
    for index, param in enumerate(params):
        hint = hints.get(param.name)
        if hint is None or not needs_conversion(hint):
            continue
        if param.kind is param.VAR_POSITIONAL:
            var_positional = hint
        elif param.kind is param.VAR_KEYWORD:
            var_keyword = hint
        else:
            if param.kind is not param.KEYWORD_ONLY:
                positional.append((index, hint))
            if param.kind is not param.POSITIONAL_ONLY:
                keyword[param.name] = hint
    result = hints.get("return")
    return Conversions(
        tuple(positional), keyword, var_positional, var_keyword,
        result if result is not None and needs_conversion(result) else None,
    )  # fmt: skip
