"""Budget periods, in UTC: `day`, `month` (the default) and `total` (never resets)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

KEEP_AFTER_END_S = 7 * 86400  # counters of a finished period stay readable this long
DAY_S = 86400  # POSIX time has no leap seconds: UTC day n is [n * 86400, (n + 1) * 86400)


@dataclass(frozen=True, slots=True)
class Window:
    period: str
    id: str  # part of the counter's name: d2026-11-28, m2026-11, total
    start: date | None  # first UTC day (None: total)
    end: date | None  # first UTC day after it (None: total)
    end_ts: float | None  # `end` as epoch seconds

    def ttl_ms(self, now: float) -> int:
        """How long the period's counters must live (0: for ever)."""
        if self.end_ts is None:
            return 0
        return max(int((self.end_ts + KEEP_AFTER_END_S - now) * 1000), 1000)


def window(period: str, now: float) -> Window:
    return _window(period, int(now // DAY_S))


@functools.lru_cache(maxsize=64)
def _window(period: str, day_index: int) -> Window:
    day = date(1970, 1, 1) + timedelta(days=day_index)
    if period == "day":
        start, end, ident = day, day + timedelta(days=1), f"d{day.isoformat()}"
    elif period == "month":
        start = day.replace(day=1)
        end = date(start.year + (start.month == 12), start.month % 12 + 1, 1)
        ident = f"m{start.isoformat()[:7]}"
    elif period == "total":
        return Window(period, "total", None, None, None)
    else:
        raise ValueError(f"unknown budget period `{period}`")
    return Window(period, ident, start, end, datetime(end.year, end.month, end.day, tzinfo=UTC).timestamp())
