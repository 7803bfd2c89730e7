"""CEL filters of a Receiver (``spec.resourceFilter`` and a resource's ``filter``), as in Flux.

Flux evaluates the expression once per candidate object with ``res`` (the object's
``apiVersion``, ``kind`` and ``metadata``: Flux reads partial object metadata, not spec or
status) and ``req`` (the webhook's JSON body; here the envelope ``payload``), plus ``claims``
for verified tokens. The expression must return a boolean. Programs are compiled once per
expression text and reused for every delivery and every Receiver version that carries the
same text. cel-python lacks cel-go's string extension that Flux enables, so the commonly used
members (``split``, ``lowerAscii``, ``upperAscii``, ``trim``, ``replace``, ``join``) are added.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel

from reconciler.errors import PermanentError


def _split(value: Any, sep: Any, limit: Any = None) -> celtypes.ListType:
    text, separator = str(value), str(sep)
    if limit is None or int(limit) < 0:
        parts = text.split(separator)
    elif int(limit) == 0:
        parts = []
    else:
        parts = text.split(separator, int(limit) - 1)
    return celtypes.ListType([celtypes.StringType(p) for p in parts])


def _join(values: Any, sep: Any = "") -> celtypes.StringType:
    return celtypes.StringType(str(sep).join(str(v) for v in values))


FUNCTIONS: dict[str, Any] = {
    "split": _split,
    "lowerAscii": lambda v: celtypes.StringType(str(v).lower()),
    "upperAscii": lambda v: celtypes.StringType(str(v).upper()),
    "trim": lambda v: celtypes.StringType(str(v).strip()),
    "replace": lambda v, old, new: celtypes.StringType(str(v).replace(str(old), str(new))),
    "join": _join,
}


class Filters:
    """Compiled CEL programs by expression text."""

    def __init__(self) -> None:
        self._env = celpy.Environment()
        self._programs: dict[str, Any] = {}

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
                    "res": json_to_cel(dict(res)),
                    "req": json_to_cel(req),
                    "claims": json_to_cel(dict(claims)),
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
