"""Integers and booleans read as vLLM reads a request's fields: pydantic's lax mode (Python input).

vLLM validates a request body with pydantic models, which coerce rather than refuse: `"5"`, `" 5 "`,
`"+5"`, `"1_000"`, `"5.00"`, `5.0` and `true` are all integers (5, 5, 5, 1000, 5, 5 and 1); `5.5`, `"5.5"`,
`"1e2"` and `"0x5"` are not. Booleans are `true`/`false`, 0 and 1 (or 0.0 and 1.0), and the strings
`1 on t true y yes` / `0 off f false n no` in any case, with no spaces. The gateway reads the fields it
acts on the same way, so that it refuses no request a worker would serve, and bounds the value the worker
will use.

Where these readers accept more than pydantic does (a string that Python's `str.strip` trims and Rust's
`trim` does not), the worker still refuses it: the gateway forwards the client's own value.
"""

from __future__ import annotations

import math
import re
from typing import Any

from router.errors import InvalidRequest

__all__ = ["Unreadable", "invalid_type", "lax_bool", "lax_int"]

# Digits with single underscores between them, an optional sign, an optional fraction of zeros only.
_INT_TEXT = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*(?:\.0+)?")
_INT64 = 2**63
_TRUE = frozenset(("1", "on", "t", "true", "y", "yes"))
_FALSE = frozenset(("0", "off", "f", "false", "n", "no"))


class Unreadable(ValueError):
    """The value is not one pydantic's lax mode reads as the type asked; `expected` names that type."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def lax_int(value: Any) -> int:
    """`value` as an integer, or Unreadable. None is the caller's to handle (absent, or the field's default)."""
    if type(value) is int:
        return value
    if type(value) is bool:
        return int(value)
    if type(value) is float:
        if math.isfinite(value) and value.is_integer() and -_INT64 < value < _INT64:
            return int(value)
        raise Unreadable("an integer")
    if type(value) is str:
        text = value.strip()
        if _INT_TEXT.fullmatch(text):
            try:
                return int(text.split(".", 1)[0])
            except ValueError:  # more digits than Python converts (4,300): pydantic refuses those too
                pass
    raise Unreadable("an integer")


def lax_bool(value: Any) -> bool:
    """`value` as a boolean, or Unreadable."""
    if type(value) is bool:
        return value
    if type(value) is int or type(value) is float:
        if value == 1:
            return True
        if value == 0:
            return False
    elif type(value) is str:
        text = value.lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise Unreadable("a boolean")


def invalid_type(param: str, expected: str, value: Any) -> InvalidRequest:
    """The 400 for a field whose value is not `expected` (nor read as one)."""
    got = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", float: "a number",
           type(None): "null"}.get(type(value), "an integer")
    return InvalidRequest(f"Invalid type for '{param}': expected {expected}, but got {got} instead.",
                          param=param, code="invalid_type")
