"""CEL as Flux's Receivers use it, written once for both services.

Both services evaluate CEL from Receiver manifests: the reconciler its ``resourceFilter`` and
``filter`` expressions (``reconciler.filtering``), the receiver a ``generic-oidc`` provider's
``variables`` and ``validations``. They may not import each other, so what both need lives
here: compiling an expression once into a program, evaluating it over plain JSON-like values
with errors reduced to one short line (a cel-python error message embeds its whole
activation, claims included, which must not reach a 400 answer or a log), and the members of
cel-go's string extension that Flux enables and cel-python lacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel

Program = Any
"""A compiled cel-python program (celpy is untyped)."""


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
"""The string extension members in common use (cel-go's ``ext.Strings``, which Flux enables)."""

_ENV = celpy.Environment()


class CELError(ValueError):
    """An expression that does not compile, or failed (or returned the wrong type) when run."""


def short(error: BaseException) -> str:
    """The first line of a cel-python error, without the activation it appends."""
    text = str(error.args[0]) if error.args else str(error)
    lines = text.split(" (in activation", 1)[0].strip().splitlines()
    return lines[0] if lines else type(error).__name__


def compile_program(expression: str) -> Program:
    """A reusable program for ``expression``; CELError if it does not parse."""
    try:
        return _ENV.program(_ENV.compile(expression), functions=FUNCTIONS)
    except Exception as e:  # celpy raises CELParseError and lark errors
        lines = str(e).splitlines()  # a parse error is the source line and a caret under it
        if len(lines) >= 2 and lines[1].strip() == "^":
            detail = f"syntax error at character {lines[1].index('^') + 1}"
        else:
            detail = short(e)
        raise CELError(f"invalid CEL expression {expression!r}: {detail}") from e


def to_cel(value: Any) -> Any:
    """A JSON-like value (decoded claims, a variable's result) as CEL values."""
    return json_to_cel(value)


def evaluate(program: Program, activation: Mapping[str, Any]) -> Any:
    """Run ``program`` over ``activation`` (values already CEL); CELError on failure."""
    try:
        return program.evaluate(dict(activation))
    except Exception as e:  # CELEvalError and anything a function raised
        raise CELError(short(e)) from e


def evaluate_boolean(program: Program, activation: Mapping[str, Any]) -> bool:
    """Run ``program``, which must return a boolean (Flux's rule for validations, filters)."""
    result = evaluate(program, activation)
    if not isinstance(result, celtypes.BoolType):
        raise CELError(f"expression returned {type(result).__name__}, not a boolean")
    return bool(result)
