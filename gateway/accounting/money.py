"""Money: Decimal in Python, exact in SQL on both dialects.

PostgreSQL stores NUMERIC(24, 10). SQLite has no exact decimal type (its NUMERIC affinity turns
0.1 into a float), so there the same column holds an INTEGER count of 10^-10 units: SUM() and `+` on
integers stay exact, and this type scales back to Decimal on the way out.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import msgspec
from sqlalchemy import BigInteger, Numeric
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

SCALE = 10  # digits after the decimal point kept for every amount (per-call costs, prices, sums)
QUANTUM = Decimal(1).scaleb(-SCALE)  # 0.0000000001
ZERO = Decimal(0).quantize(QUANTUM)


def quantize(value: Decimal) -> Decimal:
    """An amount rounded (half to even) to the stored precision."""
    return value.quantize(QUANTUM, rounding=ROUND_HALF_EVEN)


def exact(value: Any) -> Decimal | None:
    """An amount as stored: a Decimal (or an int or str, read exactly) rounded to the stored precision.
    Never a float (its binary value is not the amount meant)."""
    if value is None:
        return None
    if not isinstance(value, Decimal):
        if isinstance(value, float):
            raise TypeError("money must be a Decimal (or int/str), never a float")
        value = Decimal(value)
    return quantize(value)


def plain(value: Any) -> Any:
    """`value` (builtins, Structs, Decimals) as JSON-ready builtins, amounts as exact text (never an
    exponent), dates as YYYY-MM-DD: what the reports' JSON and the console's pages hold."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, msgspec.Struct):
        return plain(msgspec.to_builtins(value, builtin_types=(Decimal,)))
    return value


class Money(TypeDecorator[Decimal]):
    """An exact decimal: NUMERIC(24, 10) on PostgreSQL, a scaled BIGINT on SQLite.

    Used for amounts and for the few exact non-money quantities prices are built from (GPUs per replica).
    """

    impl = Numeric(24, SCALE)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(24, SCALE, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        value = exact(value)
        if value is None:
            return None
        if dialect.name == "sqlite":
            return int(value.scaleb(SCALE))
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            if isinstance(value, float):  # only an expression SQLite computed in floating point
                raise TypeError("SQLite returned a float for a money column")
            return quantize(Decimal(int(value)).scaleb(-SCALE))
        return quantize(Decimal(value))
