"""A usage record per call: built from the relay's `Outcome` off the request path, costed, and turned
into SQL rows and rollup increments. Never any prompt or completion text.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec

from gateway.accounting.models import MONEY_SUMS, ROLLUP_KEY, ROLLUP_SUMS
from gateway.accounting.money import ZERO, exact
from gateway.accounting.prices import PriceCatalogue
from gateway.outcome import Outcome, call_status, operation_of

STATUSES = ("ok", "upstream_error", "client_cancelled", "rejected", "timeout", "unavailable", "internal_error",
            "incomplete")
INCOMPLETE = "incomplete"  # the gateway stopped (killed) while a worker had the call: what was known then
SOURCES = ("worker", "estimate", "none")


class UsageRecord(msgspec.Struct, kw_only=True, omit_defaults=False):
    """One call, as queued, spooled (one JSON line) and written. Times are epoch seconds (UTC)."""

    request_id: str
    received: float
    finished: float
    first_token: float | None = None
    client_request_id: str | None = None
    tenant: str = "default"
    team: str | None = None
    key_id: str | None = None
    requested_model: str = ""
    routed_model: str | None = None
    pool: str | None = None
    replica: str | None = None
    policy_rule: str | None = None
    cache_hit: bool = False
    status: str = "ok"
    http_status: int | None = None
    error: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    usage_source: str = "none"
    cost: Decimal = ZERO
    reference_model: str | None = None
    reference_cost: Decimal = ZERO
    # What routing saved against the reference model (its cost - the routed model's list cost), cache hits
    # included; a line spooled without it derives it (__post_init__).
    routing_saving: Decimal = ZERO
    cache_saving: Decimal = ZERO
    currency: str = "USD"
    price_version: str | None = None
    reference_price_version: str | None = None
    purpose: str = "call"  # gateway.accounting.models.PURPOSES
    operation: str = "chat"  # gateway.outcome.operation_of: the API called (a line spooled without it: chat)

    def __post_init__(self) -> None:
        # reference_cost = cost + routing_saving + cache_saving, exactly: a record (or a line spooled or
        # journaled before routing_saving was stored) without it derives it from the other three.
        if not self.routing_saving:
            self.routing_saving = _amount(self.reference_cost) - _amount(self.cost) - _amount(self.cache_saving)


def _amount(value: Decimal) -> Decimal:
    amount = exact(value)  # as stored, so that the identity holds on the stored amounts
    assert amount is not None
    return amount


encode_record = msgspec.json.Encoder().encode
decode_record = msgspec.json.Decoder(UsageRecord).decode


# --- building ------------------------------------------------------------------------------------


def _encoding() -> Any:
    # Routing's cl100k_base (router/tokens.py), loaded once per process: tiktoken's own registry would
    # build a second copy of the same vocabulary (~35 MB) the first time a stream is cut short.
    from router.tokens import encoding

    return encoding()


def _texts(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for part in value:
            if isinstance(part, str):
                yield part
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part["text"]


def estimate_prompt_tokens(prompt: Any) -> int:
    """tiktoken's count of a chat's messages (plus OpenAI's per-message overhead) or a completion prompt.

    Only used when the worker's usage never arrived (a cancelled or broken stream).
    """
    enc = _encoding()
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):  # chat messages
        total = 3
        for message in prompt:
            total += 4 + sum(len(enc.encode_ordinary(t)) for t in _texts(message.get("content")))
        return total
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):  # token ids
        return len(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, list) for t in prompt):  # batches of ids
        return sum(len(t) for t in prompt)
    return sum(len(enc.encode_ordinary(t)) for t in _texts(prompt))


def _wall(o: Outcome, perf: float | None) -> float | None:
    return None if perf is None else o.received + (perf - o.started)


def needs_estimate(o: Outcome) -> bool:
    """A stream the worker started but whose usage never arrived: count what can be counted."""
    return o.usage is None and o.replica is not None and o.status == 200 and not o.cache_hit


def counted_usage(o: Outcome) -> tuple[str, int, int, int]:
    """(source, prompt, cached, completion tokens) of a finished call: the worker's usage, else an
    estimate for a stream that started or a call cut off by the gateway's end (`incomplete`: the prompt's
    estimate, no output), else none."""
    usage = o.usage
    if usage is not None:
        prompt = usage.prompt_tokens
        details = usage.prompt_tokens_details
        cached = min(details.cached_tokens or 0, prompt) if details is not None else 0
        return "worker", prompt, cached, usage.completion_tokens
    if needs_estimate(o) or o.failure == INCOMPLETE:
        # The prompt as sent, else (a call replayed from the journal) routing's estimate of it.
        prompt = estimate_prompt_tokens(o.prompt) if o.prompt is not None else o.prompt_estimate or 0
        return "estimate", prompt, 0, o.content_events
    return "none", 0, 0, 0


def build_record(o: Outcome, catalogue: PriceCatalogue) -> UsageRecord:
    """The record of a finished call, costed with the prices in effect when it was received."""
    source, prompt, cached, completion = counted_usage(o)
    price = catalogue.price_at(o.model or None, o.received)
    ref_model = o.reference_model or catalogue.reference_model
    ref_price = catalogue.price_at(ref_model, o.received)
    list_cost = price.cost(prompt, cached, completion) if price is not None else ZERO
    if ref_price is not None:
        reference_cost = ref_price.cost(prompt, cached, completion)
    else:  # no counterfactual price: claim no savings
        ref_model, reference_cost = None, list_cost
    # reference_cost = cost + routing_saving + cache_saving: a hit costs 0 and saves the list cost.
    finished = _wall(o, o.finished) or o.received
    return UsageRecord(
        request_id=o.record_id or o.request_id,
        client_request_id=o.request_id if o.record_id and o.record_id != o.request_id else None,
        received=o.received,
        first_token=_wall(o, o.first_byte),
        finished=finished,
        tenant=o.tenant,
        team=o.team,
        key_id=o.key_id,
        requested_model=(o.requested_model or "")[:200],
        routed_model=o.model or None,
        pool=o.pool,
        replica=o.replica,
        policy_rule=o.policy_rule,
        cache_hit=o.cache_hit,
        status=call_status(o),
        http_status=o.status or None,
        error=o.error[:200] if o.error else None,
        prompt_tokens=prompt,
        cached_tokens=cached,
        completion_tokens=completion,
        usage_source=source,
        cost=ZERO if o.cache_hit else list_cost,
        reference_model=ref_model,
        reference_cost=reference_cost,
        routing_saving=reference_cost - list_cost,
        cache_saving=list_cost if o.cache_hit else ZERO,
        currency=catalogue.currency,
        price_version=price.id if price is not None else None,
        reference_price_version=ref_price.id if ref_price is not None else None,
        operation=operation_of(o.kind),
    )


# --- SQL -----------------------------------------------------------------------------------------


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def to_row(r: UsageRecord) -> dict[str, Any]:
    received = _dt(r.received)
    finished = _dt(r.finished)
    return {
        "request_id": r.request_id,
        "client_request_id": r.client_request_id,
        "received_at": received,
        "first_token_at": _dt(r.first_token) if r.first_token is not None else None,
        "finished_at": finished,
        "day": received.date(),
        "tenant": r.tenant,
        "team": r.team,
        "key_id": r.key_id,
        "requested_model": r.requested_model,
        "routed_model": r.routed_model,
        "pool": r.pool,
        "replica": r.replica,
        "policy_rule": r.policy_rule,
        "cache_hit": r.cache_hit,
        "status": r.status,
        "http_status": r.http_status,
        "error": r.error,
        "prompt_tokens": r.prompt_tokens,
        "cached_tokens": r.cached_tokens,
        "completion_tokens": r.completion_tokens,
        "usage_source": r.usage_source,
        "duration_ms": max(round((r.finished - r.received) * 1000), 0),
        "ttft_ms": max(round((r.first_token - r.received) * 1000), 0) if r.first_token is not None else None,
        "cost": r.cost,
        "reference_model": r.reference_model,
        "reference_cost": r.reference_cost,
        "routing_saving": r.routing_saving,
        "cache_saving": r.cache_saving,
        "currency": r.currency,
        "price_version": r.price_version,
        "reference_price_version": r.reference_price_version,
        "purpose": r.purpose,
        "operation": r.operation,
    }


REFUSED = "rejected"  # the status of a call the gateway refused before a worker (400, 413, 429...)


def rollup_key(r: dict[str, Any]) -> tuple[Any, ...]:
    """A usage_records row's rollup key, in ROLLUP_KEY's order (absent team / key / model / pool / route: '')."""
    return (r["day"], r["tenant"], r["team"] or "", r["key_id"] or "", r["routed_model"] or "", r["pool"] or "",
            r["currency"], r["purpose"], r["operation"], r["policy_rule"] or "")


def rollup_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """`usage_daily` increments for `rows` (usage_records rows), one per key, sorted by key.

    `calls` counts billable calls; a call the gateway refused counts in `refused` only (never in `calls` or
    `errors`). Sorted so that concurrent writers lock rollup rows in the same order (no deadlocks).
    """
    sums: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        key = rollup_key(r)
        s = sums.get(key)
        if s is None:
            s = sums[key] = dict(zip(ROLLUP_KEY, key, strict=True))
            s["month"] = key[0].strftime("%Y-%m")
            s.update((name, ZERO if name in MONEY_SUMS else 0) for name in ROLLUP_SUMS)
        if r["status"] == REFUSED:
            s["refused"] += 1
        else:
            s["calls"] += 1
            if r["status"] != "ok":
                s["errors"] += 1
        if r["cache_hit"]:
            s["cache_hits"] += 1
        for name in ("prompt_tokens", "cached_tokens", "completion_tokens", *MONEY_SUMS):
            s[name] += r[name]
    return [sums[k] for k in sorted(sums, key=lambda k: (k[0].isoformat(), *k[1:]))]
