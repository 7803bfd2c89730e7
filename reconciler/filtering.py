"""CEL filters of a Receiver (``spec.resourceFilter`` and a resource's ``filter``), as in Flux.

Flux evaluates the expression once per candidate object with ``res`` (the object's
``apiVersion``, ``kind`` and ``metadata``: Flux reads partial object metadata, not spec or
status) and ``req`` (the webhook's JSON body; here the envelope ``payload``), plus ``claims``
for verified tokens. The expression must return a boolean. Programs are compiled once per
expression text and reused for every delivery and every Receiver version that carries the
same text. cel-python lacks cel-go's string extension that Flux enables, so the commonly used
members (``split``, ``lowerAscii``, ``upperAscii``, ``trim``, ``replace``, ``join``) are added.

``req`` is the sender's payload, up to the receiver's body limit, and CEL reads it as CEL
values, built for the whole payload before anything is evaluated. cel-python's
``json_to_cel`` builds them at about 9 µs a number (its ``IntType`` constructor runs a chain
of type checks and wraps ``int`` in a range-checking closure on every call): 9.8 s for a
3 MiB array of zeros, and it ran once per candidate object and expression, so a wildcard
selecting 20 objects spent minutes on one delivery. :func:`to_cel` builds the same values
from decoded JSON directly, and :class:`Filters` converts a payload once and reuses it for
every candidate and expression of the same delivery.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel

from reconciler.errors import PermanentError
from runtime.cel import FUNCTIONS

_INT64 = range(-(2**63), 2**63)
_new_int = int.__new__
_new_float = float.__new__
_new_str = str.__new__


def to_cel(value: Any) -> Any:
    """What ``celpy.adapter.json_to_cel`` returns for ``value``, equal and of the same types,
    at a fraction of the cost for decoded JSON.

    The types JSON decodes to are dispatched on exactly (``bool`` before ``int``) and their
    CEL twins built by the base type's constructor, which is what celpy's constructors end
    with for these inputs; an integer outside int64 raises ``ValueError`` as celpy's does.
    Anything else (a tuple, a datetime, a subclass) goes to ``json_to_cel`` itself.
    """
    kind = type(value)
    if kind is str:
        return _new_str(celtypes.StringType, value)
    if kind is dict:
        converted = celtypes.MapType()
        dict.update(converted, {to_cel(key): to_cel(item) for key, item in value.items()})
        return converted
    if kind is list:
        return celtypes.ListType([to_cel(item) for item in value])
    if kind is int:
        if value not in _INT64:
            raise ValueError("overflow")
        return _new_int(celtypes.IntType, value)
    if kind is bool:
        return _new_int(celtypes.BoolType, value)
    if kind is float:
        return _new_float(celtypes.DoubleType, value)
    if value is None:
        return None
    return json_to_cel(value)


class Filters:
    """Compiled CEL programs by expression text."""

    def __init__(self) -> None:
        self._env = celpy.Environment()
        self._programs: dict[str, Any] = {}
        self._payload: tuple[Any, Any] | None = None
        """The last payload seen and its CEL value. A delivery's candidates and expressions
        are matched one after the other with the same payload object, so one slot keyed by
        identity converts it once; holding the payload keeps its identity from being reused."""

    def _cel_payload(self, req: Any) -> Any:
        cached = self._payload
        if cached is not None and cached[0] is req:
            return cached[1]
        converted = to_cel(req)
        self._payload = (req, converted)
        return converted

    def compile(self, expression: str) -> Any:
        """The program for ``expression``; PermanentError if it does not compile."""
        program = self._programs.get(expression)
        if program is None:
            try:
                program = self._env.program(self._env.compile(expression), functions=FUNCTIONS)
            except Exception as e:  # celpy raises CELParseError and lark errors
                raise PermanentError(
                    f"invalid CEL expression {expression!r}: {e}", reason="filter_invalid"
                ) from e
            self._programs[expression] = program
        return program

    def matches(
        self, expression: str, res: Mapping[str, Any], req: Any, claims: Mapping[str, Any]
    ) -> bool:
        """Evaluate ``expression``; it must return a boolean (Flux's rule)."""
        program = self.compile(expression)
        try:
            result = program.evaluate(
                {
                    "res": to_cel(dict(res)),
                    "req": self._cel_payload(req),
                    "claims": to_cel(dict(claims)),
                }
            )
        except Exception as e:  # CELEvalError and anything a helper raised
            raise PermanentError(
                f"CEL expression {expression!r} failed: {e}", reason="filter_error"
            ) from e
        if not isinstance(result, celtypes.BoolType):
            raise PermanentError(
                f"CEL expression {expression!r} returned {type(result).__name__}, not a boolean",
                reason="filter_not_bool",
            )
        return bool(result)


def resource_view(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What ``res`` holds: ``apiVersion``, ``kind`` and ``metadata`` (Flux's partial metadata)."""
    return {
        "apiVersion": obj.get("apiVersion", ""),
        "kind": obj.get("kind", ""),
        "metadata": obj.get("metadata") or {},
    }
