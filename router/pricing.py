"""Per-token rates handed to the router, and the expected cost of a request (exact Decimal, never float).

Prices are not part of the routing policy: the accounting work owns the price catalogue and hands
`decide()` a `Mapping[str, TokenRates]` (model name -> current rates).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

__all__ = ["MILLION", "MONEY_PLACES", "TokenRates", "expected_cost", "format_money"]

MILLION = Decimal(1_000_000)
MONEY_PLACES = 6
_SHOWN = Decimal(1).scaleb(-MONEY_PLACES)


@dataclass(frozen=True, slots=True)
class TokenRates:
    """Prices per million tokens, in `currency`."""

    input_per_million: Decimal
    cached_input_per_million: Decimal
    output_per_million: Decimal
    currency: str

    def __post_init__(self) -> None:
        for name in ("input_per_million", "cached_input_per_million", "output_per_million"):
            value = getattr(self, name)
            if not isinstance(value, Decimal):
                raise TypeError(f"TokenRates.{name} must be a Decimal, got {type(value).__name__}")
            if not value.is_finite() or value < 0:
                raise ValueError(f"TokenRates.{name} must be a finite amount >= 0, got {value}")


def expected_cost(rates: TokenRates, prompt_tokens: int, max_tokens: int) -> Decimal:
    """The most this request can cost: every prompt token uncached and all `max_tokens` generated."""
    if prompt_tokens < 0 or max_tokens < 0:
        raise ValueError("token counts must be >= 0")
    return (prompt_tokens * rates.input_per_million + max_tokens * rates.output_per_million) / MILLION


def format_money(amount: Decimal) -> str:
    """An amount as people read it: fixed 6 decimal places, rounded half to even, never an exponent.

    Six places, a millionth of the currency unit: rates are quoted per million tokens, so at 1.00 per
    million one token costs 0.000001; a single call of a few dozen tokens on the cheapest rates still
    shows a non-zero cost, and a whole column lines up on one precision. Totals are summed exactly (the
    database keeps 10 places, and JSON and CSV carry those); only the printed figure is rounded.
    """
    if not isinstance(amount, Decimal):
        raise TypeError(f"money must be a Decimal, got {type(amount).__name__}")
    shown = amount.quantize(_SHOWN, rounding=ROUND_HALF_EVEN)
    return format(shown if shown else shown.copy_abs(), "f")  # no "-0.000000"
