"""One call of a shadow job (the reference model's answer, or the judge's verdict): non-streaming, through
the gateway's own upstream client and the pool's replicas, admission gate and failover, recorded in
accounting like any call but with its purpose (`shadow` or `judge`), outside tenants' limits and budgets."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from gateway.accounting.prices import PriceCatalogue
from gateway.accounting.recorder import Recorder
from gateway.accounting.records import build_record
from gateway.inference.relay import read_usage
from gateway.learning.shadow.answers import body_text
from gateway.learning.shadow.spend import DailySpend
from gateway.outcome import Outcome, failure_of, finish
from router.classify import Kind
from workers.forward import forward_call
from workers.pool import Pool
from workers.upstream import Upstream

log = logging.getLogger("gateway.learning")

Purpose = Literal["shadow", "judge"]
PATHS: dict[Kind, str] = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}


@dataclass(frozen=True)
class Caller:
    """Whose call is being evaluated: its records carry the same tenant, team and key."""

    tenant: str
    team: str | None
    key_id: str | None


@dataclass
class CallEnv:
    upstream: Upstream
    attempts: int  # replicas tried (settings.upstream_attempts)
    recorder: Recorder
    catalogue: PriceCatalogue
    spend: DailySpend


async def call_model(env: CallEnv, pool: Pool, model: str, kind: Kind, body: dict[str, Any], request_id: str,
                     purpose: Purpose, caller: Caller, prefix: bytes | None = None) -> str | None:
    """The answer's text (None when the call failed or its answer holds no text); the call is recorded
    whatever becomes of it, a cancelled one included."""
    outcome = Outcome(request_id=request_id, model=model, started=time.perf_counter(), kind=kind, pool=pool.name,
                      requested_model=model, reference_model=model, tenant=caller.tenant, team=caller.team,
                      key_id=caller.key_id)
    content = b""
    try:
        payload = msgspec.json.encode(body)
        call = (await forward_call(env.upstream, ((model, pool),), PATHS[kind], lambda _model, _pool: (payload, prefix),
                                   request_id, env.attempts)).call
        outcome.replica, outcome.status = call.replica.url, call.response.status_code
        try:
            content = await call.response.aread()
        finally:
            await call.aclose()
        outcome.first_byte = time.perf_counter()
        if outcome.status == 200:
            outcome.usage, outcome.completed = read_usage(content), True
    except BaseException as exc:
        outcome.failure, outcome.error = failure_of(exc), type(exc).__name__
        if not outcome.status:
            outcome.status = getattr(exc, "status", None) or 0
        finish(outcome)
        await _record(env, outcome, purpose)  # a cancelled call used no tokens: nothing awaited there
        raise
    finish(outcome)
    await _record(env, outcome, purpose)
    return body_text(kind, content) if outcome.completed else None


async def _record(env: CallEnv, outcome: Outcome, purpose: Purpose) -> None:
    try:
        record = build_record(outcome, env.catalogue)
    except Exception:
        log.exception("request %s: could not build its usage record", outcome.request_id)
        return
    record.purpose = purpose
    try:
        # Counted before the recorder can write it, so a day's first count from the database never holds it twice.
        await env.spend.add(record.cost)
    except Exception as exc:
        log.warning("request %s: today's shadow spend could not be updated: %s", outcome.request_id,
                    type(exc).__name__)
    finally:
        env.recorder.record(record)
    log.info("request %s: %s call on %s: %s, %d+%d tokens, cost %s %s", record.request_id, purpose, outcome.model,
             record.status, record.prompt_tokens, record.completion_tokens, format(record.cost, "f"), record.currency)
