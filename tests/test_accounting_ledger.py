"""The ledger finance reads: `reference_cost = cost + routing_saving + cache_saving` exactly on every record and
rollup (cache hits, routed calls, the reference model itself, unpriced models, shadow calls, lines spooled
before routing_saving was stored); refused calls counted apart from calls and errors; reports filtered by
tenant, team, key, model, route and operation, grouped by route, rows by key named; `verify` catching a
tampered record and a tampered rollup. On real PostgreSQL and SQLite, and through a running gateway (a real
400 and 429)."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import msgspec
import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting import reports
from gateway.accounting.models import UsageDaily, UsageRecord
from gateway.accounting.money import ZERO
from gateway.accounting.records import build_record, decode_record, encode_record, rollup_rows, to_row
from gateway.accounting.reports import ReportFilters
from gateway.accounting.store import write_records
from gateway.inference.usage import PromptTokensDetails, Usage
from gateway.outcome import Outcome
from tests.auth_support import bearer, cli, new_key, report
from tests.gateway_process import GatewayProcess, start_gateway
from tests.pg_support import catalogue, migrated_engine, record

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp()
USAGE = Usage(prompt_tokens=1000, completion_tokens=200, total_tokens=1200,
              prompt_tokens_details=PromptTokensDetails(cached_tokens=400))


def outcome(**fields: object) -> Outcome:
    o = Outcome(request_id="rid-1", model="small", started=100.0, received=NOW, replica="http://w", status=200,
                pool="p-small", requested_model="auto", first_byte=100.05, finished=100.5, completed=True,
                usage=USAGE)
    for k, v in fields.items():
        setattr(o, k, v)
    return o


def balanced(r: Any) -> bool:
    return r.reference_cost == r.cost + r.routing_saving + r.cache_saving  # type: ignore[no-any-return]


# --- each record ---------------------------------------------------------------------------------


@pytest.mark.pure
def test_the_identity_holds_on_each_kind_of_call() -> None:
    cat = catalogue()
    small, big = cat.price_at("small", NOW), cat.price_at("big", NOW)
    assert small is not None and big is not None
    list_small, list_big = small.cost(1000, 400, 200), big.cost(1000, 400, 200)
    assert Decimal(0) < list_small < list_big

    routed = build_record(outcome(), cat)  # routing chose the small model over the reference (big)
    assert (routed.cost, routed.routing_saving, routed.cache_saving) == (list_small, list_big - list_small, ZERO)

    hit = build_record(outcome(cache_hit=True, replica=None), cat)  # both savings: routing's and the cache's
    assert (hit.cost, hit.routing_saving, hit.cache_saving) == (ZERO, list_big - list_small, list_small)

    on_reference = build_record(outcome(model="big", pool="p-big"), cat)  # no routing saving
    assert (on_reference.cost, on_reference.routing_saving) == (list_big, ZERO)
    reference_hit = build_record(outcome(model="big", pool="p-big", cache_hit=True), cat)
    assert (reference_hit.cost, reference_hit.routing_saving, reference_hit.cache_saving) == (ZERO, ZERO, list_big)

    unpriced = build_record(outcome(model="mystery"), cat)  # a model without a price costs 0
    assert (unpriced.cost, unpriced.routing_saving, unpriced.reference_cost) == (ZERO, list_big, list_big)
    no_reference = build_record(outcome(reference_model="unknown-ref"), cat)  # no savings claimed
    assert (no_reference.reference_cost, no_reference.routing_saving) == (list_small, ZERO)

    shadow = build_record(outcome(model="big", pool="p-big"), cat)
    shadow.purpose = "shadow"
    refused = build_record(outcome(status=400, failure="rejected", completed=False, usage=None, replica=None), cat)
    assert refused.status == "rejected" and refused.cost == refused.reference_cost == ZERO

    for r in (routed, hit, on_reference, reference_hit, unpriced, no_reference, shadow, refused):
        assert balanced(r), r
        assert r.routing_saving == r.reference_cost - r.cost - r.cache_saving


@pytest.mark.pure
def test_a_line_spooled_before_routing_saving_was_stored_derives_it() -> None:
    hit = build_record(outcome(cache_hit=True), catalogue())
    old = msgspec.json.decode(encode_record(hit))
    del old["routing_saving"]
    replayed = decode_record(msgspec.json.encode(old))
    assert replayed == hit and replayed.routing_saving > 0
    # A rounded amount derives a routing saving from the amounts as stored, so the identity holds on them.
    odd = record(1, cost=Decimal("0.00000000005"), reference_cost=Decimal("1.00000000005"))
    assert odd.routing_saving == Decimal("1.0000000000")
    with pytest.raises(TypeError, match="never a float"):
        record(2, cost=0.1)


@pytest.mark.pure
def test_rollups_count_refused_calls_apart_and_key_by_route() -> None:
    rows = [to_row(record(n, routed_model="small", pool="p-small", team="red", policy_rule=rule, status=status,
                          cache_hit=False))
            for n, (rule, status) in enumerate([("cheap", "ok"), ("cheap", "rejected"), ("cheap", "timeout"),
                                                (None, "ok"), ("cheap", "ok")], start=1)]
    by_route = {r["route"]: r for r in rollup_rows(rows)}
    assert set(by_route) == {"cheap", ""}
    cheap = by_route["cheap"]
    assert (cheap["calls"], cheap["refused"], cheap["errors"]) == (3, 1, 1)
    assert (by_route[""]["calls"], by_route[""]["refused"]) == (1, 0)
    for r in by_route.values():
        assert balanced(msgspec.convert(r, RollupAmounts))


class RollupAmounts(msgspec.Struct):
    cost: Decimal
    reference_cost: Decimal
    routing_saving: Decimal
    cache_saving: Decimal


# --- reports -------------------------------------------------------------------------------------


def ledger() -> list[Any]:
    """Two tenants' calls: routed, cache hits, refused, errors, on two routes and operations, two keys."""
    out = []
    for n in range(1, 61):
        out.append(record(
            n, tenant="acme" if n % 2 else "globex", key_id=("key_aaaaaaaaaaaa", "key_bbbbbbbbbbbb", None)[n % 3],
            policy_rule=("cheap", "quality", None)[n % 3 - 1 if n % 5 else 2],
            status="rejected" if n % 7 == 0 else ("ok" if n % 13 else "upstream_error"),
            operation="embeddings" if n % 4 == 0 else "chat",
        ))
    shadow = [record(n, tenant="acme", purpose=purpose, routed_model="big", pool="p-big", policy_rule="cheap",
                     status=status)
              for n, purpose, status in ((100, "shadow", "ok"), (101, "judge", "rejected"))]
    return [*out, *shadow]


async def add_keys(engine: AsyncEngine) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    async with engine.begin() as conn:
        for key_id, name in (("key_aaaaaaaaaaaa", "billing batch"), ("key_bbbbbbbbbbbb", None)):
            await conn.execute(text(
                "INSERT INTO api_keys (id, prefix, key_hash, name, tenant, team, role, created_at) "
                "VALUES (:id, 'gw-', :hash, :name, 'acme', 'red', 'app', :now)"),
                {"id": key_id, "hash": key_id * 2, "name": name, "now": now})


def expected(records: list[Any], **match: Any) -> dict[str, Any]:
    """The report's measures over `records` (calls only), computed in Python from the records alone."""
    mine = [r for r in records if r.purpose == "call" and all(getattr(r, k) == v for k, v in match.items())]
    billable = [r for r in mine if r.status != "rejected"]
    return {
        "calls": len(billable),
        "refused": len(mine) - len(billable),
        "errors": sum(r.status != "ok" for r in billable),
        "cost": sum((r.cost for r in mine), ZERO),
        "reference_cost": sum((r.reference_cost for r in mine), ZERO),
        "routing_savings": sum((r.reference_cost - r.cost - r.cache_saving for r in mine), ZERO),
        "cache_savings": sum((r.cache_saving for r in mine), ZERO),
    }


def measures(row: reports.ReportRow) -> dict[str, Any]:
    return {k: getattr(row, k) for k in ("calls", "refused", "errors", "cost", "reference_cost", "routing_savings",
                                         "cache_savings")}


@pytest.mark.parametrize("source", ["rollups", "records"])
async def test_filters_route_groups_refused_and_key_names(any_url: str, source: str) -> None:
    records = ledger()
    assert any(r.status == "rejected" for r in records) and any(r.cache_hit for r in records)
    async with migrated_engine(any_url) as engine:
        await add_keys(engine)
        assert await write_records(engine, records) == len(records)

        async def one(**filters: str) -> reports.ReportRow:
            report = await reports.usage_report(engine, group_by=(), filters=ReportFilters(**filters),
                                                source=source)  # type: ignore[arg-type]
            (row,) = report.rows
            return row

        total = await one()
        assert measures(total) == expected(records) and total.refused > 0 and total.routing_savings > 0
        assert total.reference_cost == total.cost + total.routing_savings + total.cache_savings
        assert total.shadow_calls == 2  # a refused one included: in no other measure
        assert measures(await one(tenant="acme")) == expected(records, tenant="acme")
        assert measures(await one(route="cheap")) == expected(records, policy_rule="cheap")
        assert measures(await one(route="")) == expected(records, policy_rule=None)
        assert measures(await one(key="key_aaaaaaaaaaaa", operation="embeddings")) == expected(
            records, key_id="key_aaaaaaaaaaaa", operation="embeddings")
        assert measures(await one(tenant="globex", team="blue", model="small")) == expected(
            records, tenant="globex", team="blue", routed_model="small")
        nothing = await reports.usage_report(engine, filters=ReportFilters(tenant="nobody"), source=source)  # type: ignore[arg-type]
        assert nothing.rows == []

        by_route = await reports.usage_report(engine, group_by=("route",), source=source)  # type: ignore[arg-type]
        assert {r.group["route"]: measures(r) for r in by_route.rows} == {
            "cheap": expected(records, policy_rule="cheap"), "quality": expected(records, policy_rule="quality"),
            None: expected(records, policy_rule=None)}

        by_key = await reports.usage_report(engine, group_by=("key", "tenant"), filters=ReportFilters(tenant="acme"),
                                            source=source)  # type: ignore[arg-type]
        names = {r.group["key"]: r.key_name for r in by_key.rows}
        assert names == {"key_aaaaaaaaaaaa": "billing batch", "key_bbbbbbbbbbbb": None, None: None}
        doc = json.loads(reports.to_json(by_key))
        assert doc["filters"] == {"tenant": "acme"}
        assert list(doc["rows"][0])[:4] == ["key", "key_name", "tenant", "currency"]
        assert next(csv.reader(io.StringIO(reports.to_csv(by_key))))[:5] == [
            "key", "key_name", "tenant", "currency", "calls"]
        table = reports.to_table(by_key)
        assert "billing batch" in table and "refused" in table.splitlines()[1]
        assert (await reports.verify(engine))[1] == []


async def test_verify_catches_a_tampered_record_and_a_tampered_rollup(any_url: str) -> None:
    async with migrated_engine(any_url) as engine:
        await write_records(engine, [record(n, policy_rule="cheap") for n in range(1, 12)])
        assert (await reports.verify(engine))[1] == []
        async with engine.begin() as conn:  # a saving inflated on one record
            await conn.execute(update(UsageRecord).where(UsageRecord.request_id == "req-00000003")
                               .values(routing_saving=UsageRecord.routing_saving + Decimal("0.01")))
        problems = (await reports.verify(engine))[1]
        assert problems[0] == ("1 record(s) where reference_cost != cost + routing_saving + cache_saving: "
                               "req-00000003")
        assert any("routing_savings rollup" in p for p in problems[1:])  # and the rollup no longer matches it
        async with engine.begin() as conn:  # put back; then a rollup's cost lowered
            await conn.execute(update(UsageRecord).where(UsageRecord.request_id == "req-00000003")
                               .values(routing_saving=UsageRecord.routing_saving - Decimal("0.01")))
            await conn.execute(update(UsageDaily).where(UsageDaily.model == "big")
                               .values(cost=UsageDaily.cost - Decimal("0.000001")))
        problems = (await reports.verify(engine))[1]
        assert problems[0].startswith("1 rollup(s) where reference_cost != cost + routing_saving + cache_saving: ")
        assert " big p-big USD call chat cheap" in problems[0]
        assert any("cost rollup" in p for p in problems[1:])


# --- through a running gateway -------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gateway = start_gateway(tmp_path_factory.mktemp("ledger"), {"recorder_flush_interval_s": 0.05})
    yield gateway
    gateway.stop()


def test_a_400_and_a_429_are_refused_calls_apart_from_calls_and_errors(gw: GatewayProcess) -> None:
    key, key_id = new_key(gw, "acme", "red", "app", "--rpm", "2", "--name", "ledger probe")
    hello = [{"role": "user", "content": "hi"}]
    bodies: list[dict[str, Any]] = [
        {"model": "demo-small", "messages": hello, "max_tokens": 3},
        {"model": "auto", "messages": hello, "max_tokens": 3},
        {"model": "demo-small", "messages": "not a list"},  # 400
        {"model": "demo-small", "messages": hello, "max_tokens": 3},  # 429: the key's 2 requests a minute
    ]
    statuses = [httpx.post(gw.api + "/chat/completions", json=b, headers=bearer(key), timeout=30).status_code
                for b in bodies]
    assert statuses == [200, 200, 400, 429]
    deadline = time.monotonic() + 20
    while True:
        doc = report(gw, "--key", key_id, "--group-by", "key,route")
        (total,) = doc["totals"]
        if total["calls"] + total["refused"] == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert doc["filters"] == {"key": key_id}
    assert (total["calls"], total["refused"], total["errors"]) == (2, 2, 0)
    assert {r["key_name"] for r in doc["rows"]} == {"ledger probe"}
    assert all(r["route"] is not None for r in doc["rows"] if r["calls"])  # the routed calls name their rule
    for row in [*doc["rows"], total]:
        assert Decimal(row["reference_cost"]) == (Decimal(row["cost"]) + Decimal(row["routing_savings"])
                                                  + Decimal(row["cache_savings"]))
    assert Decimal(total["cost"]) > 0 and Decimal(total["routing_savings"]) > 0
    routed = next(r for r in doc["rows"] if r["route"] is not None)
    one_route = report(gw, "--key", key_id, "--route", routed["route"], "--operation", "chat",
                       "--group-by", "key,route")
    assert one_route["rows"] == [routed]
    assert report(gw, "--key", key_id, "--operation", "embeddings")["rows"] == []
    verify = cli(gw, "report", "--verify")
    assert verify.returncode == 0 and "rollups match the records" in verify.stdout, verify.stdout
