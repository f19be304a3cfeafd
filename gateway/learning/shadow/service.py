"""Shadow evaluation: a sample of the calls the quality predictor routed to a model other than the reference
is asked again of the reference model, off the client's path, both answers are scored (the exact judge or a
judge model), and the two scores are stored in `routing_outcomes` with the call's features (never its text).

On the request path a routed call pays one hash of its request id (`sample`); a sampled one also keeps its
answer (the JSON body, or the relayed stream's events up to `MAX_TAP_BYTES`) in a `Watch` on its outcome.
When the call is over, a step (`offer`, gateway/completion.py) offers the job: a call a worker answered in
full, not from the cache, by a model other than the reference, while today's shadow spend is under the
budget and the reference model's pool is not busier than `max_load`, enters a bounded queue, else it is
dropped and counted. `concurrency` tasks owned by the app's lifespan run the jobs; at shutdown they get
`GRACE_S` to finish, then are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting import Accounting
from gateway.inference.openai_request import prompt_prefix
from gateway.learning.shadow.answers import Watch, question
from gateway.learning.shadow.calls import CallEnv, Caller, call_model
from gateway.learning.shadow.judge import (
    EXACT,
    JUDGE_MAX_TOKENS,
    exact_scores,
    grading_prompt_path,
    grading_request,
    load_grading_prompt,
    parse_verdict,
    swapped,
)
from gateway.learning.shadow.spend import DailySpend
from gateway.learning.store import OutcomeRow, upsert_outcomes
from gateway.outcome import Outcome
from gateway.routing import PolicyStore
from gateway.settings import Settings, ShadowSettings
from router import features
from router.classify import Kind
from workers.pool import Pool, Pools, pool_load
from workers.upstream import Upstream

log = logging.getLogger("gateway.learning")

PRIME_TIMEOUT_S = 5.0
GRACE_S = 3.0  # at shutdown, how long running and queued jobs may still take before they are cancelled
WRITE_TIMEOUT_S = 10.0
DROP_REASONS = ("queue_full", "budget", "load", "answer", "shutdown")
_HASH_SPAN = float(1 << 64)


class ShadowConfigError(ValueError):
    """The shadow settings name a model the gateway cannot call."""


@dataclass(slots=True)
class Job:
    record_id: str  # the evaluated call's id in usage_records
    kind: Kind
    body: dict[str, Any]  # the request as parsed (and as sent to the worker)
    watch: Watch
    model: str  # the model that answered
    reference: str
    vector: features.Vector
    predictor: str  # sha256 of the predictor that routed the call
    caller: Caller


@dataclass
class ShadowStats:
    sampled: int = 0  # calls that qualified and were sampled
    completed: int = 0  # both scores stored
    failed: int = 0  # a call, the judge or the database failed (unparsable verdicts included)
    unparsable: int = 0  # judge verdicts without a usable {"a": .., "b": ..}
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))


def sample_fraction(request_id: str) -> float:
    """A request id's place in [0, 1): calls below `sample_rate` are sampled (the same id always is)."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8, person=b"shadow-sample").digest()
    return int.from_bytes(digest, "little") / _HASH_SPAN


def shadow_body(data: dict[str, Any], model: str, cap: int) -> dict[str, Any]:
    """The request for the reference model: the same, not streamed, one choice, output capped at `cap`."""
    body = {k: v for k, v in data.items() if k not in ("stream_options", "n", "best_of")}
    asked = [v for v in (data.get("max_tokens"), data.get("max_completion_tokens"))
             if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    limit = min([*asked, cap])
    body.update(model=model, stream=False, max_tokens=limit)
    if "max_completion_tokens" in body:
        body["max_completion_tokens"] = limit
    return body


class Shadow:
    def __init__(self, config: ShadowSettings, policies: PolicyStore, pools: Pools, env: CallEnv,
                 engine: AsyncEngine, grading: str | None, default_reference: str | None) -> None:
        self.config = config
        self.policies = policies
        self.pools = pools
        self.env = env
        self.engine = engine
        self.grading = grading  # the grading prompt, for a judge model
        self.default_reference = default_reference  # the price catalogue's, for decisions without one
        self.stats = ShadowStats()
        self.queue: asyncio.Queue[Job] = asyncio.Queue(config.max_queue)
        self.closed = False
        self._workers: list[asyncio.Task[None]] = []

    # --- the request path ---------------------------------------------------------------------------

    def sample(self, outcome: Outcome, data: dict[str, Any]) -> Watch | None:
        """For a call the predictor routed: a watch for its answer when the call is sampled (kept on the
        outcome: `offer` reads it when the call is over), else None."""
        record_id = outcome.record_id or outcome.request_id  # always the gateway's: clients cannot pick them
        if outcome.quality is None or sample_fraction(record_id) >= self.config.sample_rate:
            return None
        outcome.watch = watch = Watch(data)
        return watch

    def offer(self, o: Outcome) -> None:
        """The step after the call (from `finish`): a sampled call a worker answered in full, by a model
        other than the reference, becomes a job (queued, or dropped and counted)."""
        watch, probe, kind = o.watch, o.quality, o.kind
        if watch is None or probe is None or probe.vector is None or (kind != "chat" and kind != "completion"):
            return
        reference = self.config.reference_model or o.reference_model or self.default_reference
        if reference is not None and o.answered_in_full() and o.model != reference:
            self._offer(Job(o.record_id or o.request_id, kind, watch.request, watch, o.model, reference,
                            probe.vector, probe.predictor.hash, Caller(o.tenant, o.team, o.key_id)))

    def _offer(self, job: Job) -> None:
        self.stats.sampled += 1
        if self.closed:
            return self._drop("shutdown", job)
        if self.env.spend.known >= self.config.daily_budget:
            return self._drop("budget", job)
        pool = self.pool_of(job.reference)
        if pool is not None and pool_load(pool) > self.config.max_load:
            return self._drop("load", job)
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self._drop("queue_full", job)

    def _drop(self, reason: str, job: Job) -> None:
        self.stats.dropped[reason] += 1
        log.debug("request %s: shadow evaluation dropped (%s)", job.record_id, reason)

    # --- the jobs -------------------------------------------------------------------------------------

    def pool_of(self, model: str) -> Pool | None:
        """The pool serving `model`: the catalogue's (policy in force), else a pool serving it by name."""
        entry = self.policies.active.policy.models.get(model)
        if entry is not None:
            return self.pools.by_name.get(entry.pool)
        return self.pools.by_model.get(model)

    def start(self) -> None:
        self._workers = [asyncio.get_running_loop().create_task(self._work(), name=f"shadow-{i}")
                         for i in range(self.config.concurrency)]

    async def close(self, grace_s: float = GRACE_S) -> None:
        """Let running and queued jobs finish for `grace_s`, then cancel what is left."""
        self.closed = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), grace_s)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        while not self.queue.empty():
            self._drop("shutdown", self.queue.get_nowait())

    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                result = await self._evaluate(job)
            except asyncio.CancelledError:
                self.stats.dropped["shutdown"] += 1
                log.info("request %s: shadow evaluation cancelled at shutdown", job.record_id)
                raise
            except Exception:
                log.exception("request %s: shadow evaluation failed", job.record_id)
                result = "failed"
            finally:
                self.queue.task_done()
            if result == "completed":
                self.stats.completed += 1
            elif result in ("failed", "unparsable"):
                self.stats.failed += 1
                self.stats.unparsable += result == "unparsable"
            else:
                self._drop(result, job)

    async def _evaluate(self, job: Job) -> str:
        """"completed", "failed", "unparsable" or the reason it was dropped."""
        cfg = self.config
        answer = job.watch.answer(job.kind)
        if answer is None:  # no text (a tool call), or a stream over the bound
            return "answer"
        try:
            spent = await self.env.spend.spent()
        except Exception as exc:
            log.warning("request %s: today's shadow spend is unknown (%s); not evaluated", job.record_id,
                        type(exc).__name__)
            return "budget"
        if spent >= cfg.daily_budget:
            return "budget"
        pool = self.pool_of(job.reference)
        if pool is None:
            log.warning("request %s: no pool serves the reference model %s", job.record_id, job.reference)
            return "failed"
        if pool_load(pool) > cfg.max_load:
            return "load"
        prefix = prompt_prefix(job.body, pool.affinity.prefix_chars) if pool.affinity else None
        reference = await call_model(self.env, pool, job.reference, job.kind,
                                     shadow_body(job.body, job.reference, cfg.max_tokens), f"{job.record_id}.shadow",
                                     "shadow", job.caller, prefix)
        if reference is None:
            return "failed"
        if cfg.judge == EXACT:
            scores: tuple[float, float] | str = exact_scores(answer, reference)
        else:
            scores = await self._judge(job, answer, reference)
        if isinstance(scores, str):
            return scores
        await self._store(job, scores)
        log.info("request %s: shadow evaluation by %s: %s %.2f, %s %.2f", job.record_id, cfg.judge, job.model,
                 scores[0], job.reference, scores[1])
        return "completed"

    async def _judge(self, job: Job, answer: str, reference: str) -> tuple[float, float] | str:
        """(answer's score, reference's score) from the judge model, or why not."""
        judge = self.config.judge
        pool = self.pool_of(judge)
        if pool is None or self.grading is None:
            log.warning("request %s: no pool serves the judge model %s", job.record_id, judge)
            return "failed"
        flip = swapped(job.record_id)
        first, second = (reference, answer) if flip else (answer, reference)
        prompt = grading_request(self.grading, question(job.kind, job.body), first, second)
        body = {"model": judge, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                "max_tokens": JUDGE_MAX_TOKENS}
        verdict = await call_model(self.env, pool, judge, "chat", body, f"{job.record_id}.judge", "judge", job.caller)
        if verdict is None:
            return "failed"
        scores = parse_verdict(verdict)
        if scores is None:
            log.warning("request %s: the judge's verdict is not a JSON object with scores a and b", job.record_id)
            return "unparsable"
        return (scores[1], scores[0]) if flip else scores

    async def _store(self, job: Job, scores: tuple[float, float]) -> None:
        encoded = features.encode_vector(job.vector)
        who = job.caller
        rows = [OutcomeRow(request_id=job.record_id, tenant=who.tenant, team=who.team, key_id=who.key_id, model=model,
                           score=score, label=None, source="shadow", judge=self.config.judge,
                           feature_layout=features.FEATURES, features=encoded, predictor=job.predictor)
                for model, score in ((job.model, scores[0]), (job.reference, scores[1]))]
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await upsert_outcomes(self.engine, rows)

    @property
    def spent_today(self) -> Decimal:
        return self.env.spend.known


async def start_shadow(settings: Settings, policies: PolicyStore, pools: Pools, upstream: Upstream,
                       accounting: Accounting, redis: Redis | None) -> Shadow | None:
    """The running shadow evaluator, or None when `shadow.sample_rate` is 0. Raises ShadowConfigError when a
    model it names has no pool, or GradingPromptError for a judge model without a usable grading prompt."""
    config = settings.shadow
    if not config.enabled:
        return None
    spend = DailySpend(accounting.engine, accounting.catalogue.currency, redis, config.key_prefix)
    env = CallEnv(upstream, settings.upstream_attempts, accounting.recorder, accounting.catalogue, spend)
    grading = None
    if config.judge != EXACT:
        grading = load_grading_prompt(grading_prompt_path(policies.directory))
    shadow = Shadow(config, policies, pools, env, accounting.engine, grading, accounting.catalogue.reference_model)
    for what, model in (("reference_model", config.reference_model),
                        ("judge", config.judge if config.judge != EXACT else None)):
        if model is not None and shadow.pool_of(model) is None:
            raise ShadowConfigError(f"shadow.{what}: no configured pool serves the model `{model}` (catalogue "
                                    f"models: {', '.join(policies.active.policy.models)})")
    try:  # today's spend so far, before the first call asks
        async with asyncio.timeout(PRIME_TIMEOUT_S):
            await spend.spent()
    except Exception as exc:
        log.warning("shadow evaluation: today's spend could not be read yet (%s); jobs read it when they run",
                    type(exc).__name__)
    shadow.start()
    log.info("shadow evaluation on: %.1f%% of routed calls, judge %s, budget %s %s a day", 100 * config.sample_rate,
             config.judge, config.daily_budget, accounting.catalogue.currency)
    return shadow
