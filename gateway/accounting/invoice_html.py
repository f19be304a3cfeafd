"""A monthly statement as a standalone printable page: one HTML file, inline CSS, no external asset, laid out
for A4 (`@page`), whose lines table breaks between rows and repeats its header on each printed page.

Every value is escaped. Amounts are shown exactly, thousands grouped, all with the same number of decimal
places: the fewest (at least 2) that show every amount of the statement exactly, so that a column's decimal
points line up and the totals shown are the sums of the lines shown. Each amount's `title` holds it to the
10 decimal places the accounting keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from html import escape

from gateway.accounting.invoice import Invoice
from gateway.accounting.money import SCALE, quantize
from gateway.accounting.reports import ReportRow
from gateway.limits.budgets import BudgetRow

CSS = """
@page { size: A4; margin: 14mm 12mm 16mm 12mm; }
* { box-sizing: border-box; }
body { font: 10pt/1.4 "Helvetica Neue", Arial, sans-serif; color: #1a1a1a; margin: 0 auto; max-width: 186mm;
       padding: 8mm 0; }
h1 { font-size: 18pt; margin: 0 0 2mm; }
h2 { font-size: 12pt; margin: 7mm 0 2mm; border-bottom: 1px solid #999; padding-bottom: 1mm;
     break-after: avoid; page-break-after: avoid; }
header { display: flex; justify-content: space-between; gap: 8mm; border-bottom: 2px solid #1a1a1a;
         padding-bottom: 3mm; }
dl { display: grid; grid-template-columns: auto auto; gap: 0.5mm 4mm; margin: 0; font-size: 9pt; }
dt { color: #555; } dd { margin: 0; }
.due { text-align: right; } .due .label { color: #555; font-size: 9pt; }
.due .value { font-size: 16pt; font-weight: bold; }
table { width: 100%; border-collapse: collapse; font-size: 8.5pt; }
thead { display: table-header-group; }
th { text-align: left; font-weight: 600; border-bottom: 1px solid #1a1a1a; padding: 1.2mm 1.5mm;
     vertical-align: bottom; }
td { border-bottom: 1px solid #ddd; padding: 1mm 1.5mm; vertical-align: top; }
tr { break-inside: avoid; page-break-inside: avoid; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.key small, .muted { color: #666; }
tr.total td { border-top: 1.5px solid #1a1a1a; border-bottom: none; font-weight: bold; }
section { break-inside: avoid; page-break-inside: avoid; }
section.lines { break-inside: auto; page-break-inside: auto; }
.identity { font-size: 9pt; color: #333; margin: 1mm 0 0; }
.note { font-size: 8.5pt; color: #555; margin: 1mm 0 0; }
footer { margin-top: 8mm; font-size: 8pt; color: #666; border-top: 1px solid #ccc; padding-top: 2mm; }
@media print {
  body { padding: 0; max-width: none; }
  a { color: inherit; text-decoration: none; }
}
"""


def _decimals(value: Decimal) -> int:
    """The decimal places `value` needs to be shown exactly."""
    exponent = quantize(value).normalize().as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def amount_text(value: Decimal, places: int = 2) -> str:
    """An amount for reading: thousands grouped, `places` decimal places (more if it needs them: never rounded)."""
    return format(quantize(value).quantize(Decimal(1).scaleb(-max(places, _decimals(value)))), ",f")


def places_for(amounts: Iterable[Decimal]) -> int:
    """The fewest decimal places (2 to the accounting's 10) that show each of `amounts` exactly."""
    return min(max([2, *(_decimals(a) for a in amounts)]), SCALE)


Money = Callable[..., str]  # (amount, currency=None) -> the cell's HTML


def money_cells(places: int) -> Money:
    def cell(value: Decimal, currency: str | None = None) -> str:
        shown = amount_text(value, places) + (f" {currency}" if currency else "")
        return f'<span title="{escape(format(quantize(value), "f"))}">{escape(shown)}</span>'

    return cell


def _amounts(inv: Invoice) -> Iterable[Decimal]:
    for row in [*inv.lines, *inv.totals]:
        yield from (row.cost, row.reference_cost, row.routing_savings, row.cache_savings, row.shadow_cost)
    for b in inv.budgets:
        yield from (b.limit, b.spent, b.remaining)


def _count(value: int) -> str:
    return f"{value:,}"


def _text(value: str | None, empty: str = "—") -> str:
    return escape(value) if value else f'<span class="muted">{empty}</span>'


def _row(cells: Iterable[tuple[str, str]], cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<tr{attr}>" + "".join(f'<td class="{c}">{v}</td>' if c else f"<td>{v}</td>" for c, v in cells) + "</tr>"


def _head(names: Sequence[tuple[str, str]]) -> str:
    return "<thead><tr>" + "".join(f'<th class="{c}">{escape(n)}</th>' if c else f"<th>{escape(n)}</th>"
                                   for c, n in names) + "</tr></thead>"


LINE_HEAD = (("", "Team"), ("", "Model"), ("", "Key"), ("num", "Calls"), ("num", "Refused"),
             ("num", "Prompt tokens"), ("num", "Cached"), ("num", "Completion tokens"), ("num", "Cost"))


def _line_cells(row: ReportRow, several: bool, money: Money) -> list[tuple[str, str]]:
    return [("num", _count(row.calls)), ("num", _count(row.refused)), ("num", _count(row.prompt_tokens)),
            ("num", _count(row.cached_tokens)), ("num", _count(row.completion_tokens)),
            ("num", money(row.cost, row.currency if several else None))]


def _key(row: ReportRow) -> str:
    key = row.group.get("key")
    if not key:
        return _text(None)
    name = f"<br><small>{escape(row.key_name)}</small>" if row.key_name else ""
    return f"{escape(key)}{name}"


def _lines(inv: Invoice, money: Money) -> str:
    several = len(inv.totals) > 1  # lines of more than one currency: each amount names its own
    body = [_row([("", _text(r.group.get("team"))), ("", _text(r.group.get("model"))), ("key", _key(r)),
                  *_line_cells(r, several, money)]) for r in inv.lines]
    if not inv.lines:
        body.append(f'<tr><td colspan="{len(LINE_HEAD)}" class="muted">No calls this month.</td></tr>')
    for t in inv.totals:
        label = f"Total ({escape(t.currency)})" if several else "Total"
        body.append(_row([("", label), ("", ""), ("", ""), *_line_cells(t, several, money)], "total"))
    return (f'<section class="lines"><h2>Calls</h2><table>{_head(LINE_HEAD)}<tbody>{"".join(body)}</tbody></table>'
            '<p class="note">Calls: billable calls (every call a worker or the cache answered, or that failed there). '
            "Refused: calls the gateway refused before a worker (a bad request, a limit, the policy); they cost "
            "nothing. Prompt tokens include the cached ones.</p></section>")


def _savings(inv: Invoice, money: Money) -> str:
    head = (("", "Currency"), ("num", "Reference cost"), ("num", "Routing savings"), ("num", "Cache savings"),
            ("num", "Cost"), ("num", "Cache hits"))
    rows = [_row([("", escape(t.currency)), ("num", money(t.reference_cost)), ("num", money(t.routing_savings)),
                  ("num", money(t.cache_savings)), ("num", money(t.cost)), ("num", _count(t.cache_hits))])
            for t in inv.totals]
    return ("<section><h2>Savings</h2>"
            f"<table>{_head(head)}<tbody>{''.join(rows)}</tbody></table>"
            '<p class="identity">Reference cost = cost + routing savings + cache savings: what the calls would have '
            "cost on the reference model, without routing or the cache.</p></section>")


def _shadow(inv: Invoice, money: Money) -> str:
    parts = [f"{_count(t.shadow_calls)} call(s), {money(t.shadow_cost, t.currency)}" for t in inv.totals]
    figures = "; ".join(parts) if parts else "none"
    return ('<section><h2>Shadow evaluation (not billed)</h2>'
            f'<p>The platform\'s own evaluation of routed calls on the reference model: {figures}. '
            "<strong>Not billed</strong>: borne by the platform, and in none of the figures above.</p></section>")


BUDGET_HEAD = (("", "Budget"), ("", "Period"), ("num", "Limit"), ("num", "Spent"), ("num", "Remaining"),
               ("num", "Used"), ("", "Runs out"))


def _budget_label(b: BudgetRow) -> str:
    if b.scope == "team":
        return f"team {escape(b.team)}"
    name = f" <small>{escape(b.key_name)}</small>" if b.key_name else ""
    return f"key {escape(b.key_id or '')}{name}<br><small>team {escape(b.team)}</small>"


def _period(b: BudgetRow) -> str:
    if b.period_start is None:
        return "total"
    return f"{escape(b.period)} from {b.period_start.isoformat()}"


def _budgets(inv: Invoice, money: Money) -> str:
    if not inv.budgets:
        return '<section><h2>Budgets</h2><p class="muted">No budget is set.</p></section>'
    rows = []
    for b in inv.budgets:
        forecast = b.forecast_run_out
        rows.append(_row([("", _budget_label(b)), ("", _period(b)), ("num", money(b.limit)),
                          ("num", money(b.spent)), ("num", money(b.remaining)),
                          ("num", f"{escape(format(b.used_pct, 'f'))} %"),
                          ("", forecast.isoformat() if forecast else _text(None))]))
    return (f"<section><h2>Budgets</h2><table>{_head(BUDGET_HEAD)}<tbody>{''.join(rows)}</tbody></table>"
            f'<p class="note">Amounts in {escape(inv.currency)}; spend recorded in each budget\'s period in force on '
            f"{escape(min(inv.generated_at.date(), inv.month.last).isoformat())}. Runs out: the day the budget "
            "runs out at its average daily spend so far, if within its period.</p></section>")


def to_html(inv: Invoice) -> str:
    money = money_cells(places_for(_amounts(inv)))
    title = f"Statement {inv.tenant}{' / ' + inv.team if inv.team else ''} {inv.month.name}"
    due = "".join(f'<div class="value">{money(t.cost, t.currency)}</div>' for t in inv.totals) \
        or f'<div class="value">{money(Decimal(0), inv.currency)}</div>'
    month = inv.month
    facts = [("Tenant", escape(inv.tenant)), *([("Team", escape(inv.team))] if inv.team else []),
             ("Month", f"{escape(month.name)} ({month.first.isoformat()} to {month.last.isoformat()}, UTC)"),
             ("Currency", escape(inv.currency)),
             ("Generated", escape(inv.generated_at.strftime("%Y-%m-%d %H:%M:%S UTC")))]
    if inv.policy_hash:
        short = escape(inv.policy_hash[:12])
        facts.append(("Routing policy", f'<span title="{escape(inv.policy_hash)}">{short}</span>'))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f"<header><div><h1>Statement</h1><dl>{dl}</dl></div>"
        f'<div class="due"><div class="label">Cost of the month</div>{due}</div></header>'
        f"{_lines(inv, money)}{_savings(inv, money)}{_shadow(inv, money)}{_budgets(inv, money)}"
        f"<footer>{escape(inv.filename_stem)} · amounts exact · "
        "days are UTC</footer></body></html>\n"
    )
