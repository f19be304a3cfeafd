"""From a finished call (the relay's Outcome) to its usage record: status, token source, cost."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from gateway.accounting import records
from gateway.accounting.money import ZERO
from gateway.accounting.records import build_record, estimate_prompt_tokens, to_row
from gateway.inference.usage import PromptTokensDetails, Usage
from gateway.outcome import Outcome, failure_of
from router import tokens
from router.errors import InvalidRequest, ModelNotFound, NoHealthyReplica, UpstreamTimeout
from tests.pg_support import catalogue

pytestmark = pytest.mark.pure

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp()


def outcome(**fields: object) -> Outcome:
    o = Outcome(request_id="rid-1", model="small", started=100.0, received=NOW, replica="http://w", status=200,
                pool="p-small", requested_model="auto", first_byte=100.05, finished=100.5)
    for k, v in fields.items():
        setattr(o, k, v)
    return o


def test_a_completed_call_is_costed_from_the_workers_usage() -> None:
    usage = Usage(prompt_tokens=1000, completion_tokens=200, total_tokens=1200,
                  prompt_tokens_details=PromptTokensDetails(cached_tokens=400))
    r = build_record(outcome(usage=usage, completed=True), catalogue())
    assert (r.status, r.usage_source) == ("ok", "worker")
    assert (r.prompt_tokens, r.cached_tokens, r.completion_tokens) == (1000, 400, 200)
    small = catalogue().price_at("small", NOW)
    big = catalogue().price_at("big", NOW)
    assert small is not None and big is not None
    assert r.cost == small.cost(1000, 400, 200) == Decimal("0.0001600000")  # 600*.1 + 400*.05 + 200*.4 per M
    assert r.reference_model == "big" and r.reference_cost == big.cost(1000, 400, 200)
    assert r.routing_saving == r.reference_cost - r.cost > 0
    assert r.price_version == small.id and r.reference_price_version == big.id
    assert r.request_id == "rid-1" and r.client_request_id is None
    row = to_row(r)
    assert row["duration_ms"] == 500 and row["ttft_ms"] == 50
    assert row["day"].isoformat() == "2026-03-01"
    assert row["received_at"] == datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_a_client_chosen_request_id_is_kept_beside_the_gateways_own() -> None:
    r = build_record(outcome(record_id="f" * 32, completed=True, usage=Usage(1, 1, 2)), catalogue())
    assert r.request_id == "f" * 32 and r.client_request_id == "rid-1"


def test_a_cancelled_stream_without_usage_is_estimated() -> None:
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Say hello to the gateway."}]}]
    r = build_record(outcome(cancelled=True, content_events=7, prompt=messages), catalogue())
    assert (r.status, r.usage_source) == ("client_cancelled", "estimate")
    assert r.completion_tokens == 7
    assert r.prompt_tokens == estimate_prompt_tokens(messages) > 10
    assert r.cost > 0


def test_estimates_use_the_tokenizer_routing_loaded() -> None:
    """One cl100k_base per process (~35 MB each): accounting's estimates use routing's copy."""
    assert estimate_prompt_tokens("Once upon a time") == tokens.count_tokens("Once upon a time")
    assert records._encoding() is tokens.encoding()


def test_calls_the_gateway_ended_itself_have_a_status_and_no_tokens() -> None:
    r = build_record(outcome(replica=None, status=404, failure="rejected", model="", pool=None), catalogue())
    assert (r.status, r.usage_source, r.prompt_tokens, r.cost) == ("rejected", "none", 0, ZERO)
    assert r.routed_model is None
    broken = build_record(outcome(error="RemoteProtocolError", content_events=3, prompt="Once upon"), catalogue())
    assert (broken.status, broken.usage_source, broken.completion_tokens) == ("upstream_error", "estimate", 3)
    slow = build_record(outcome(error="ReadTimeout"), catalogue())
    assert slow.status == "timeout"
    refused = build_record(outcome(status=400), catalogue())  # the worker's own 4xx: nothing generated
    assert (refused.status, refused.usage_source) == ("upstream_error", "none")


@pytest.mark.parametrize(("error", "status"), [
    (InvalidRequest("x"), "rejected"), (ModelNotFound("x"), "rejected"), (NoHealthyReplica("x"), "unavailable"),
    (UpstreamTimeout("x"), "timeout"), (asyncio.CancelledError(), "client_cancelled"),
    (RuntimeError("x"), "internal_error"),
])
def test_failures_are_classified(error: BaseException, status: str) -> None:
    assert failure_of(error) == status


def test_a_cache_hit_costs_nothing_and_saves_what_it_would_have_cost() -> None:
    r = build_record(outcome(cache_hit=True, completed=True, usage=Usage(100, 50, 150)), catalogue())
    small = catalogue().price_at("small", NOW)
    assert small is not None
    assert r.cost == ZERO and r.cache_saving == small.cost(100, 0, 50) > 0
    # Routing chose the small model, the cache served it: both saved, and the parts add up to the reference.
    big = catalogue().price_at("big", NOW)
    assert big is not None and r.reference_cost == big.cost(100, 0, 50)
    assert r.routing_saving == r.reference_cost - r.cache_saving > 0
    assert r.reference_cost == r.cost + r.routing_saving + r.cache_saving


def test_unpriced_models_cost_zero_and_claim_no_savings() -> None:
    r = build_record(outcome(model="mystery", completed=True, usage=Usage(100, 50, 150)), catalogue())
    assert r.cost == ZERO and r.price_version is None
    assert r.reference_model == "big" and r.reference_cost > 0
    # Without a reference price, the reference is the call itself: no savings claimed.
    routed = outcome(completed=True, usage=Usage(100, 50, 150), reference_model="unknown-ref")
    r = build_record(routed, catalogue())
    assert r.reference_model is None and r.reference_cost == r.cost and r.routing_saving == ZERO


def test_a_price_change_never_alters_a_recorded_cost() -> None:
    from gateway.accounting.prices import parse_prices
    from tests.pg_support import PRICES_YAML

    before = build_record(outcome(completed=True, usage=Usage(1000, 1000, 2000)), catalogue())
    raised = parse_prices(PRICES_YAML.replace("output_per_million: 0.40", "output_per_million: 0.80"))
    after = build_record(outcome(completed=True, usage=Usage(1000, 1000, 2000)), raised)
    assert after.price_version != before.price_version
    assert after.cost > before.cost
    assert before.cost == Decimal("0.0005000000")  # the record keeps what it was given


def test_recording_is_cheap_on_the_request_path() -> None:
    from gateway.accounting.recorder import Recorder

    rec = Recorder(None, catalogue(), "/nonexistent", queue_max=1_000_000)
    outs = [outcome(completed=True, usage=Usage(10, 10, 20)) for _ in range(10_000)]
    t = time.perf_counter()
    for o in outs:
        rec.record(o)
    assert (time.perf_counter() - t) / len(outs) < 20e-6
