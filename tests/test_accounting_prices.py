"""The price catalogue: strict parsing with file:line errors, versions, and the cost formulas."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction

import pytest

from gateway.accounting.money import QUANTUM
from gateway.accounting.prices import (
    DEFAULT_PRICES_FILE,
    PricesError,
    current_token_rates,
    load_prices,
    parse_prices,
)
from tests.pg_support import PRICES_YAML, catalogue

pytestmark = pytest.mark.pure

T2025 = datetime(2025, 6, 1, tzinfo=UTC).timestamp()


def exact(value: Fraction) -> Decimal:
    """`value` rounded half-even to 10 places, computed without any intermediate rounding."""
    scaled = value * 10**10
    floor = scaled.numerator // scaled.denominator
    rest = scaled - floor
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2):
        floor += 1
    return Decimal(floor).scaleb(-10)


def test_per_token_cost_is_exact() -> None:
    small = catalogue().price_at("small", T2025)
    assert small is not None and small.mode == "per_token"
    # 1234 prompt tokens of which 200 cached, 567 completion tokens.
    expected = (Decimal(1034) * Decimal("0.10") + Decimal(200) * Decimal("0.05") + Decimal(567) * Decimal("0.40")) \
        / Decimal(1_000_000)
    assert small.cost(1234, 200, 567) == expected.quantize(QUANTUM, rounding=ROUND_HALF_EVEN)
    assert small.cost(1234, 200, 567) == Decimal("0.0003402000")


@pytest.mark.parametrize(("prompt", "cached", "completion"), [(0, 0, 0), (1, 0, 1), (1234, 200, 567),
                                                              (6000, 0, 300), (7, 7, 3), (99_999, 1, 12_345)])
def test_gpu_time_formula(prompt: int, cached: int, completion: int) -> None:
    """cost = gpu_hour_price * gpus * ((prompt - cached) / prefill_tps + completion / decode_tps) / 3600"""
    big = catalogue().price_at("big", T2025)
    assert big is not None and big.mode == "gpu_time"
    formula = Fraction(3) * 2 * (Fraction(prompt - cached, 6000) + Fraction(completion, 300)) / 3600
    assert big.cost(prompt, cached, completion) == exact(formula)


def test_gpu_time_one_second_of_each_phase() -> None:
    big = catalogue().price_at("big", T2025)
    assert big is not None
    # 6000 prompt tokens = 1 s of prefill, 300 completion tokens = 1 s of decode: 2 s of a 2-GPU replica at $3/GPU-h.
    assert big.cost(6000, 0, 300) == Decimal("0.0033333333")
    # Equivalent per-token rates: $6/h / 6000 tok/s -> $0.2778 per million input tokens; cached are free.
    assert big.input_per_million == Decimal("0.2777777778")
    assert big.output_per_million == Decimal("5.5555555556")
    assert big.cached_input_per_million == 0


def test_versions_are_content_addressed_and_chosen_by_effective_date() -> None:
    text = PRICES_YAML + """\
  small-v:
    - effective_from: 2020-01-01
      per_token: {input_per_million: 1, output_per_million: 2}
    - effective_from: 2030-01-01T12:00:00+02:00
      per_token: {input_per_million: 3, output_per_million: 4}
"""
    cat = parse_prices(text)
    old, new = cat.versions["small-v"]
    assert old.id.startswith("small-v@2020-01-01#") and new.id.startswith("small-v@2030-01-01#")
    assert new.effective_from == datetime(2030, 1, 1, 10, tzinfo=UTC)
    assert cat.price_at("small-v", datetime(2030, 1, 1, 9, 59, tzinfo=UTC).timestamp()) is old
    assert cat.price_at("small-v", datetime(2030, 1, 1, 10, 0, tzinfo=UTC).timestamp()) is new
    assert cat.price_at("small-v", datetime(2019, 1, 1, tzinfo=UTC).timestamp()) is None
    assert old.cached_input_per_million == old.input_per_million  # default: the input price
    # A price changed in place (same model and date) is a new version with a new id.
    changed = parse_prices(text.replace("input_per_million: 3,", "input_per_million: 3.5,"))
    assert changed.versions["small-v"][1].id != new.id
    assert changed.versions["small-v"][0].id == old.id
    assert parse_prices(text).versions["small-v"][1].id == new.id  # stable across loads


def test_current_token_rates_for_the_router() -> None:
    from router.pricing import TokenRates

    rates = current_token_rates(catalogue(), datetime(2026, 1, 1, tzinfo=UTC))
    assert set(rates) == {"small", "big"}
    assert isinstance(rates["small"], TokenRates)
    assert rates["small"].input_per_million == Decimal("0.10") and rates["small"].currency == "USD"
    assert rates["big"].output_per_million == Decimal("5.5555555556")
    assert current_token_rates(catalogue(), datetime(2019, 1, 1, tzinfo=UTC)) == {}


def test_shipped_catalogue_prices_the_demo_models() -> None:
    cat = load_prices(DEFAULT_PRICES_FILE)
    assert {"demo-small", "demo-large"} <= set(cat.versions)
    assert cat.reference_model == "demo-large"
    assert cat.versions["demo-small"][0].mode == "per_token"
    assert cat.versions["demo-large"][0].mode == "gpu_time"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("currency: USD\nmodels:\n  m:\n    - effective_from: 2026-01-01\n      per_token:\n"
         "        input_per_million: 1\n        output_per_milion: 2\n",
         ":6: m[0]: Object contains unknown field `output_per_milion`"),
        ("currency: USD\nmodels:\n  m:\n    - effective_from: 2026-01-01\n      per_token:\n"
         "        input_per_million: cheap\n        output_per_million: 2\n", ":6: m[0]: Invalid decimal string"),
        ("currency: USD\nmodels:\n  m:\n    - effective_from: 2026-01-01\n      per_token: {input_per_million: 1, "
         "output_per_million: 2, surcharge: 1}\n", "unknown field `surcharge`"),
        ("currency: USD\nmodels:\n  m:\n    - effective_from: soon\n      per_token: {input_per_million: 1, "
         "output_per_million: 2}\n", ":4: m[0]: effective_from `soon` is not a date"),
        ("currency: USD\nmodels:\n  m:\n    - effective_from: 2026-01-01\n", ":4: m[0]: give exactly one of"),
        ("currency: USD\nmodels:\n  m:\n    - effective_from: 2026-01-01\n      gpu_time: {gpu_hour_price: 2, "
         "prefill_tokens_per_s: 0, decode_tokens_per_s: 5}\n", "must be > 0"),
        ("currency: USD\nmodels:\n  m:\n    - effective_from: 2026-01-01\n      per_token: {input_per_million: -1, "
         "output_per_million: 2}\n", "input_per_million must be a number >= 0"),
        ("currency: dollars\nmodels: {}\n", ":1: currency `dollars` is not an ISO 4217 code"),
        ("currency: USD\nreference_model: x\nmodels: {}\n", ":2: reference_model `x` has no price"),
        ("currency: USD\nmodels:\n  m:\n    - {effective_from: 2026-01-01, per_token: {input_per_million: 1, "
         "output_per_million: 1}}\n    - {effective_from: 2026-01-01, per_token: {input_per_million: 2, "
         "output_per_million: 2}}\n", "two prices effective from 2026-01-01"),
        ("currency: USD\nmodelz: {}\n", "unknown field `modelz`"),
        ("- 1\n", "the top level must be a mapping"),
    ],
)
def test_bad_price_files_are_refused_with_file_and_line(text: str, needle: str) -> None:
    with pytest.raises(PricesError) as err:
        parse_prices(text, "prices.yaml")
    assert str(err.value).startswith("prices.yaml")
    assert needle in str(err.value)


def test_numbers_are_read_exactly() -> None:
    # 0.1 as a YAML float would be 0.1000000000000000055511151231257827 in binary; here it stays 0.1.
    cat = parse_prices("currency: EUR\nmodels:\n  m:\n    - effective_from: 2026-01-01\n      per_token: "
                       "{input_per_million: 0.1, output_per_million: 0.3}\n")
    price = cat.versions["m"][0]
    assert price.cost(1_000_000, 0, 1_000_000) == Decimal("0.4")
    assert price.currency == "EUR"
