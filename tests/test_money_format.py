"""Amounts printed for people: one function, one precision, in every table and text the CLI prints."""

from __future__ import annotations

import json
import re
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.accounting.reports import Report, ReportRow, to_table
from gateway.cli import main
from gateway.limits.budgets import BudgetRow
from gateway.limits.budgets import to_table as budgets_table
from router.pricing import MONEY_PLACES, format_money

pytestmark = pytest.mark.pure

AMOUNT = re.compile(r"-?\d+\.\d+")


@pytest.mark.parametrize(("amount", "shown"), [
    ("0.0000025", "0.000002"),  # half to even
    ("0.0000035", "0.000004"),
    ("0.0000015001", "0.000002"),
    ("12.5", "12.500000"),
    ("7", "7.000000"),
    ("1E-7", "0.000000"),  # never an exponent
    ("-0.0000001", "0.000000"),  # never a negative zero
    ("-1.25", "-1.250000"),
    ("123456789.1234567891", "123456789.123457"),
    ("0.0000012345", "0.000001"),
])
def test_format_money(amount: str, shown: str) -> None:
    assert format_money(Decimal(amount)) == shown
    assert len(shown.split(".")[1]) == MONEY_PLACES


def test_money_is_never_a_float() -> None:
    with pytest.raises(TypeError, match="must be a Decimal"):
        format_money(0.1)  # type: ignore[arg-type]


def test_the_usage_and_budget_tables_print_amounts_at_the_one_precision() -> None:
    row = ReportRow({"model": "m"}, "USD", calls=3, cost=Decimal("0.0000123456"), reference_cost=Decimal("0.5"),
                    routing_savings=Decimal("0.4999876544"), cache_savings=Decimal(0), shadow_cost=Decimal("2"))
    table = to_table(Report(None, None, ("model",), [row]))
    data = table.splitlines()[3]
    assert data.split()[-6:] == ["0.000012", "0.500000", "0.499988", "0.000000", "0", "2.000000"]
    budgets = budgets_table([BudgetRow("team", "acme", "red", None, None, "month", date(2026, 1, 1),
                                       date(2026, 2, 1), Decimal("25"), "USD", Decimal("1.0000015"))])
    assert budgets.splitlines()[2].split()[7:11] == ["25.000000", "1.000002", "-", "23.999998"]


def test_keys_print_budgets_at_the_one_precision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    assert main(["keys", "create", "--config", str(config), "--tenant", "acme", "--team", "red", "--role", "app",
                 "--budget", "12.5"]) == 0
    assert "budget 12.500000 per month" in capsys.readouterr().err
    assert main(["keys", "team", "--config", str(config), "--tenant", "acme", "--team", "red", "--budget", "3",
                 "--budget-period", "total"]) == 0
    assert "budget 3.000000 in total" in capsys.readouterr().out
    assert main(["keys", "list", "--config", str(config)]) == 0
    assert "budget 12.500000 per month" in capsys.readouterr().out
    assert main(["keys", "teams", "--config", str(config), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["budget"] == "3.0000000000"  # JSON: exact


def test_router_evaluate_prints_costs_at_the_one_precision(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"question {i}: " + "word " * (i % 30)}],
             "outcomes": {"small": float(i % 3 != 0), "large": 1.0}} for i in range(60)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prices = tmp_path / "prices.yaml"
    prices.write_text("currency: EUR\nmodels:\n"
                      "  small: [{effective_from: 2026-01-01, per_token: {input_per_million: 0.10, "
                      "output_per_million: 0.20}}]\n"
                      "  large: [{effective_from: 2026-01-01, per_token: {input_per_million: 2.00, "
                      "output_per_million: 4.00}}]\n")
    assert main(["router", "train", "--data", str(data), "--models", "small,large", "--out", str(tmp_path / "p")]) == 0
    capsys.readouterr()
    assert main(["router", "evaluate", "--predictor", str(tmp_path / "p"), "--data", str(data), "--models",
                 "small,large", "--prices", str(prices), "--plot", "none"]) == 0
    table = capsys.readouterr().out.split("\n\n")[1].splitlines()[2:]
    costs = [cell.split(" / ")[1] for line in table for cell in re.findall(r"\d\.\d{3} / \S+", line)]
    assert len(costs) == 6 * len(table) and all(re.fullmatch(r"\d+\.\d{6}", c) for c in costs), table
