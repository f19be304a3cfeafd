"""The day a budget runs out at its average daily spend so far (gateway/limits/budgets.py), a pure function,
and the budgets report's rows that carry it."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from gateway.limits.budgets import BudgetRow, forecast_run_out

D = Decimal


def test_a_month_budget_runs_out_on_the_day_its_average_reaches_the_limit() -> None:
    # 100 spent in 10 days: 10 a day; 300 is reached at the end of the 30th day.
    assert forecast_run_out(D(300), D(100), date(2026, 1, 1), date(2026, 2, 1), date(2026, 1, 10)) == date(2026, 1, 30)
    # The same pace in February: the 30th day is past the period's end.
    assert forecast_run_out(D(300), D(100), date(2026, 2, 1), date(2026, 3, 1), date(2026, 2, 10)) is None


def test_the_day_is_rounded_up_exactly_in_decimal() -> None:
    # 3 days, 0.3 spent: 0.1 a day; a limit of 1 is reached at the end of day 10, not day 11 (no float error).
    assert forecast_run_out(D("1"), D("0.3"), date(2026, 1, 1), None, date(2026, 1, 3)) == date(2026, 1, 10)
    # A hair more than a whole number of days: the next day.
    assert forecast_run_out(D("1.0000000001"), D("0.3"), date(2026, 1, 1), None, date(2026, 1, 3)) == date(2026, 1, 11)
    # Reached exactly on the period's last day: that day; one day later: never within the period.
    assert forecast_run_out(D(31), D(1), date(2026, 1, 1), date(2026, 2, 1), date(2026, 1, 1)) == date(2026, 1, 31)
    assert forecast_run_out(D(32), D(1), date(2026, 1, 1), date(2026, 2, 1), date(2026, 1, 1)) is None


def test_no_spend_no_forecast_and_a_spent_budget_runs_out_today() -> None:
    assert forecast_run_out(D(10), D(0), date(2026, 1, 1), date(2026, 2, 1), date(2026, 1, 5)) is None
    assert forecast_run_out(D(10), D(10), date(2026, 1, 1), date(2026, 2, 1), date(2026, 1, 5)) == date(2026, 1, 5)
    assert forecast_run_out(D(10), D(12), date(2026, 1, 1), date(2026, 2, 1), date(2026, 1, 5)) == date(2026, 1, 5)


def test_a_total_budget_has_no_end_and_counts_from_its_first_day_of_spend() -> None:
    # 2 a day since 2025-12-31 (2 days to 2026-01-01): 1000 is reached on day 500.
    assert forecast_run_out(D(1000), D(4), date(2025, 12, 31), None, date(2026, 1, 1)) == date(2027, 5, 14)
    assert forecast_run_out(D(1000), D(4), None, None, date(2026, 1, 1)) is None  # no spend day known


def test_a_tiny_spend_forecasts_no_day_rather_than_one_beyond_the_calendar() -> None:
    tiny = Decimal("0.0000000001")
    assert forecast_run_out(Decimal(10), tiny, date(2026, 12, 1), None, date(2026, 12, 7)) is None
    assert forecast_run_out(Decimal(10), tiny, date(2026, 12, 1), date(2027, 1, 1), date(2026, 12, 7)) is None


def test_a_day_budget_runs_out_today_or_not_at_all() -> None:
    day, end = date(2026, 3, 4), date(2026, 3, 5)
    assert forecast_run_out(D(5), D(1), day, end, day) is None
    assert forecast_run_out(D(5), D(5), day, end, day) == day


def _row(period: str, start: date | None, end: date | None, limit: str, recorded: str, **extra: object) -> BudgetRow:
    return BudgetRow("key", "acme", "red", "key_0123456789ab", "sk-gw-abcd", period, start, end, D(limit), "USD",
                     D(recorded), **extra)  # type: ignore[arg-type]


def test_rows_carry_the_forecast_and_the_share_used() -> None:
    row = _row("month", date(2026, 1, 1), date(2026, 2, 1), "300", "100", as_of=date(2026, 1, 10), key_name="ci")
    d = row.as_dict()
    assert d["forecast_run_out"] == "2026-01-30" and d["used_pct"] == "33.33" and d["key_name"] == "ci"
    assert list(d).index("key_name") == list(d).index("key_id") + 1
    # The live counter leads the records: the forecast reads the larger spend.
    row.live_spent = D(150)
    assert row.as_dict()["forecast_run_out"] == "2026-01-20" and row.as_dict()["used_pct"] == "50.00"
    total = _row("total", None, None, "1000", "4", as_of=date(2026, 1, 1), spend_start=date(2025, 12, 31))
    assert total.as_dict()["forecast_run_out"] == "2027-05-14"
    assert _row("month", date(2026, 1, 1), date(2026, 2, 1), "300", "0", as_of=date(2026, 1, 10)).as_dict()[
        "forecast_run_out"] is None
