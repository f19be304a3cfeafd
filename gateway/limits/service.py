"""`Limits`: what the request path calls. Before the call, `admit` checks and takes the caller's rate
limits and reserves the most the call can cost against its budgets (one backend call: one Redis round
trip); after the call, a background task settles the reservation to the call's real cost and tokens.

- The budget reservation is a true upper bound of the call's cost, whatever its body
  (gateway/limits/upper_bound.py): the prompt bounded by the request body's bytes plus the chat
  template's tokens (`budget_template_tokens_per_request`, `budget_template_tokens_per_message`), or by
  the context window when the body has content no byte count bounds (images, audio, a request
  template); the output by `max_tokens` (or the rule's cap, or the context window when none is set)
  times `n` (or `best_of`) times the number of prompts; every prompt token at the dearer of its cached
  and uncached prices, at rates derived once per price version from the catalogue's `Price.cost` (never
  below it: `per_million`), for each model the call may end on (the routed one and its fallbacks), the
  largest. A budget is therefore never overspent, as long as the catalogue's context windows are the
  workers' (`max_model_len`) and their tokenizers count at most a token per byte (byte-level BPE and
  byte-fallback tokenizers do).
- Embeddings, score and rerank have no output: their prompt alone is reserved, bounded the same way per
  sequence the engine encodes (upper_bound.py's `pooled_texts`), by the catalogue's window or else the one
  the pool's workers report. Tokenize and detokenize use no tokens: requests per minute alone limit them.
- Token limits (tpm) take the expected tokens instead: the prompt as routing estimated it (tiktoken)
  plus the output asked for (or the classifier's assumption when none is) times `n` times the prompts.
  They are a rate, settled to the real count right after the call; the upper bound would refuse every
  call without `max_tokens` under a tpm smaller than a context window.
- The settlement: `build_record` (the function the recorder uses, with the same catalogue and the
  same `received` time), so the settled cost is exactly the recorded cost.
- Over a rate limit: 429 `rate_limit_exceeded` (type `requests` or `tokens`) with `Retry-After`;
  over a budget: 429 `insufficient_quota`. Answers carry OpenAI's `x-ratelimit-*` headers when rate
  limits apply.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting.money import SCALE, ZERO
from gateway.accounting.prices import Price, PriceCatalogue
from gateway.accounting.reads import BoundedReads, as_bounded
from gateway.accounting.records import build_record, counted_usage, estimate_prompt_tokens, needs_estimate
from gateway.auth.principal import Principal
from gateway.inference.pooling_request import prompt_of, score_sides
from gateway.limits import budgets as budget_db
from gateway.limits.backend import (
    OK,
    OVER_BUDGET,
    RATE_LIMITED,
    SEED,
    TOO_LARGE,
    Admission,
    AdmitResult,
    Backend,
    BudgetCheck,
    BudgetHold,
    BudgetSettle,
    MemoryBackend,
    RateCheck,
    RateSettle,
    RateState,
)
from gateway.limits.periods import window
from gateway.limits.redis_backend import RedisBackend
from gateway.limits.upper_bound import choices, output_limit, pooled_texts, text_bound
from gateway.outcome import CallKind, Outcome
from gateway.redis_batch import RedisBatcher
from gateway.routing import Route
from gateway.settings import Settings
from router.errors import BudgetExceeded, GatewayError, InvalidRequest, LimitsUnavailable, RateLimited
from router.request_limits import prompt_count

log = logging.getLogger("gateway.limits")

DEFAULT_OUTPUT = 256  # the expected output of a direct call (no routing features) that sets no max_tokens
POOLED = frozenset({"embeddings", "score", "rerank"})  # calls with prompt tokens and no output
TOKENIZING = frozenset({"tokenize", "detokenize"})  # calls with no tokens at all
SETTLE_BATCH = 500
SETTLE_RETRY_S = 1.0
SETTLE_GIVE_UP_S = 120.0


def to_units(amount: Decimal) -> int:
    """An amount (quantized to the accounting's 10 places) as integer 10^-10 units."""
    return int(amount.scaleb(SCALE).to_integral_value())


def ceil_units(amount: Decimal) -> int:
    return math.ceil(amount.scaleb(SCALE))


def from_units(units: int) -> Decimal:
    return Decimal(units).scaleb(-SCALE)


def duration(ms: int) -> str:
    """A duration as OpenAI's x-ratelimit-reset-* headers write it: 20ms, 1s, 6m0s, 1.5s."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"


@dataclass
class LimitStats:
    """Counters for the metrics (gateway/telemetry/) to export."""

    admitted: int = 0
    rate_limited: int = 0
    over_budget: int = 0
    soft_threshold_crossed: int = 0
    overspent: int = 0  # settlements that took a budget past its limit (the estimate was short)
    settled: int = 0
    settle_failures: int = 0
    seeded: int = 0


class HeldPrice(NamedTuple):
    """A model's price version in force from `start` to before `end`, as integer units per million tokens (no
    price: None): looked up and derived once per version, not per call."""

    prompt_rate: int | None  # a prompt token at the dearer of its cached and uncached prices
    output_rate: int
    start: float
    end: float


def per_million(price: Price | None) -> tuple[int | None, int]:
    """(prompt, output) rates of `price` in integer units per million tokens, each rounded up by one unit: with
    them, a reservation is integer arithmetic yet never below `Price.cost` (linear in the tokens, then rounded
    to a unit), which stays the one formula of a cost."""
    if price is None:
        return None, 0
    million = 1_000_000
    prompt = max(to_units(price.cost(million, 0, 0)), to_units(price.cost(million, million, 0)))
    return prompt + 1, to_units(price.cost(0, 0, million)) + 1


class Limits:
    def __init__(
        self,
        backend: Backend,
        catalogue: PriceCatalogue,
        engine: AsyncEngine | BoundedReads | None,
        *,
        soft_pct: int = 80,
        reservation_ttl_s: float = 3600.0,
        template_tokens_per_request: int = 256,
        template_tokens_per_message: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.catalogue = catalogue
        self.reads = as_bounded(engine)  # a counter's first value: a bounded read (gateway/accounting/reads.py)
        self.soft_pct = soft_pct
        self.template_per_request = template_tokens_per_request
        self.template_per_message = template_tokens_per_message
        self.reservation_ttl_ms = int(reservation_ttl_s * 1000)
        self.clock = clock
        self.stats = LimitStats()
        self._queue: collections.deque[tuple[Admission, Outcome | None]] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._busy = False  # the settler has a batch in hand
        self._last_error_log = 0.0
        self._prices: dict[str, HeldPrice] = {}  # per model, the version in force at the last call's time

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._settler(), name="limits-settler")

    async def close(self, timeout_s: float = 10.0) -> None:
        """Settle what is pending, then stop."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                log.error("limits: %d settlement(s) still pending at shutdown; their reservations expire",
                          len(self._queue))
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        await self.backend.close()

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait until every finished call is settled (tests, benchmarks)."""
        deadline = time.monotonic() + timeout_s
        while self._queue or self._busy:
            if time.monotonic() > deadline:
                raise TimeoutError("limits: settlements still pending")
            if self._wake is not None:
                self._wake.set()
            await asyncio.sleep(0.001)

    # --- before the call --------------------------------------------------------------------------

    def estimate(self, chosen: Route, body: dict[str, Any], size: int, kind: CallKind, received: float,
                 priced: bool = True) -> tuple[int, int]:
        """(tokens, cost units) of a call whose body is `body`, `size` bytes as received: the tokens it is
        expected to use (token limits), and the most it can cost (the budget reservation; 0 unless `priced`)."""
        if kind in POOLED:
            return self._pooled(chosen, body, size, kind, received, priced)
        if kind in TOKENIZING:
            return 0, 0  # no tokens: limited by its requests alone
        features, decision = chosen.features, chosen.decision
        prompts = prompt_count(body) if kind == "completion" else 1
        sequences = choices(body) * prompts
        cap = decision.max_tokens if decision is not None else None
        if features is not None:
            expected = features.prompt_tokens + (cap if cap is not None else features.output_tokens) * sequences
            if not priced:
                return expected, 0
            asked = cap if cap is not None else output_limit(body, kind)  # per sequence; None: up to the window
        else:  # a direct call: routing did not classify it
            asked = output_limit(body, kind)
            expected = (estimate_prompt_tokens(body.get("messages", body.get("prompt")))
                        + (asked if asked is not None else DEFAULT_OUTPUT) * sequences)
            if not priced:
                return expected, 0
        text = text_bound(size, body, prompts, self.template_per_request, self.template_per_message)
        models = chosen.models
        most = 0  # cost units, times a million
        for model, _pool in chosen.targets:
            held = self._held(model, received)
            if held.prompt_rate is None:  # no price: the call costs nothing there
                continue
            spec = models.get(model) if models is not None else None
            if spec is not None:  # no prompt is longer than the window, no output either
                window = spec.context_window
                prompt = window * prompts if text is None or text > window * prompts else text
                output = (window if asked is None or asked > window else asked) * sequences
            elif asked is None or text is None:
                raise _unbounded(model, asked is None)
            else:  # a model the catalogue does not list: no window, the body's own bounds
                prompt, output = text, asked * sequences
            if (cost := prompt * held.prompt_rate + output * held.output_rate) > most:
                most = cost
        return expected, -(-most // 1_000_000)

    def _pooled(self, chosen: Route, body: dict[str, Any], size: int, kind: str, received: float,
                priced: bool) -> tuple[int, int]:
        """Embeddings, score, rerank: prompt tokens alone, no output. The most they can be: the body's bytes
        (plus a text encoded once per pair, and the template's tokens per sequence and message), at most the
        context window per sequence (gateway/limits/upper_bound.py)."""
        expected = estimate_prompt_tokens(prompt_of(kind, body))
        if not priced:
            return expected, 0
        sequences, repeated, messages = pooled_texts(kind, body, score_sides(body) if kind != "embeddings"
                                                     else (None, None))
        text = None if repeated is None else \
            size + repeated + sequences * self.template_per_request + messages * self.template_per_message
        most = 0
        for model, pool in chosen.targets:
            held = self._held(model, received)
            if held.prompt_rate is None:
                continue
            spec = chosen.models.get(model) if chosen.models is not None else None
            window = spec.context_window if spec is not None else pool.max_model_len()
            if window is not None and (text is None or text > window * sequences):
                prompt = window * sequences
            elif text is not None:
                prompt = text
            else:
                raise InvalidRequest(
                    f"The context window of `{model}` is not known yet (its workers have not listed it), and content "
                    "that is not text has no other bound: a call under a budget may send it text only.",
                    param="input" if kind == "embeddings" else None)
            most = max(most, prompt * held.prompt_rate)
        return expected, -(-most // 1_000_000)

    def _held(self, model: str, received: float) -> HeldPrice:
        """`model`'s price version in force at `received`, derived once per version."""
        held = self._prices.get(model)
        if held is None or not held.start <= received < held.end:
            held = self._prices[model] = self._price(model, received)
        return held

    def _price(self, model: str, received: float) -> HeldPrice:
        """`model`'s price at `received` and the span of time it is in force."""
        start, end = -math.inf, math.inf
        price: Price | None = None
        for version in self.catalogue.versions.get(model, ()):
            if version.effective_ts <= received:
                price, start = version, version.effective_ts
            else:
                end = version.effective_ts
                break
        return HeldPrice(*per_million(price), start, end)

    async def admit(self, principal: Principal, chosen: Route, body: dict[str, Any], size: int,
                    outcome: Outcome) -> dict[str, str]:
        """Check and take the caller's limits for a call whose body is `body` (`size` bytes as received); the
        x-ratelimit-* headers for its answer.

        Raises RateLimited / BudgetExceeded (429) or LimitsUnavailable (503). When the call is
        admitted, its admission is kept on `outcome`, for `settle` once the call is finished.
        """
        if not principal.limited:
            return {}
        now = self.clock()
        kl, tl = principal.key_limits, principal.team_limits
        key_id, team = principal.key_id, principal.team
        team_name = f"{principal.tenant}:{team}" if team is not None else None
        priced = kl.budget is not None or tl.budget is not None
        tokens, cost = (self.estimate(chosen, body, size, outcome.kind, outcome.received, priced)
                        if priced or kl.tpm is not None or tl.tpm is not None else (0, 0))
        rates: list[RateCheck] = []
        budgets: list[BudgetHold] = []
        for scope, ident, lim in (("key", key_id, kl), ("team", team_name, tl)):
            if ident is None:
                continue
            tag = "k" if scope == "key" else "t"
            if lim.rpm is not None:
                rates.append(RateCheck(f"r:{tag}:{ident}:req", scope, "requests", lim.rpm, 1))
            if lim.tpm is not None:
                rates.append(RateCheck(f"r:{tag}:{ident}:tok", scope, "tokens", lim.tpm, tokens))
            if lim.budget is not None:
                w = window(lim.budget_period, now)
                check = BudgetCheck(f"b:{tag}:{ident}:{w.id}", scope, to_units(lim.budget), cost, w.ttl_ms(now))
                label = f"key {key_id}" if scope == "key" else f"team {principal.tenant}/{team}"
                if cost > check.limit:
                    self.stats.over_budget += 1
                    raise self._over_budget(check, label, lim.budget_period, None)
                budgets.append(BudgetHold(check, label))
        member = os.urandom(8).hex()
        checks = [b.check for b in budgets]
        result: AdmitResult | None = None
        try:
            for _ in range(len(checks) + 2):
                try:
                    result = await self.backend.admit(rates, checks, member, self.reservation_ttl_ms)
                except GatewayError:
                    raise
                except Exception as exc:
                    raise self._unavailable(exc) from None
                if result.status != SEED:
                    break
                await self._seed(principal, budgets[result.index], now)
        except asyncio.CancelledError:
            # The client left while the backend answered, which may or may not have taken the budgets:
            # release the reservation (a no-op if there is none). Tokens are not refunded (never given
            # back unless taken).
            if budgets:
                self._enqueue(Admission(member, 0, [], budgets, {}, received=outcome.received), None)
            raise
        assert result is not None
        if result.status == RATE_LIMITED:
            self.stats.rate_limited += 1
            raise self._rate_limited(rates[result.index], result.retry_ms)
        if result.status == TOO_LARGE:
            self.stats.rate_limited += 1
            raise self._too_large(rates[result.index])
        if result.status == OVER_BUDGET:
            self.stats.over_budget += 1
            hold = budgets[result.index]
            lim = kl if hold.check.scope == "key" else tl
            raise self._over_budget(hold.check, hold.label, lim.budget_period, result.committed)
        if result.status != OK:
            raise self._unavailable(RuntimeError(f"budget counters not seeded ({result.status})"))
        self.stats.admitted += 1
        admission = Admission(member, tokens, [r for r in rates if r.kind == "tokens"], budgets,
                              rate_headers(result.rates), received=outcome.received)
        if outcome.finished is not None:  # the call ended (the client left) while we waited: give it back
            self._enqueue(admission, None)
        else:
            outcome.admission = admission  # settled by `settle` when the call is over
        return admission.headers

    async def _seed(self, principal: Principal, hold: BudgetHold, now: float) -> None:
        """Start a budget counter from what the accounting database recorded for its period. The read waits
        at most `database_request_timeout_s`; without it the call is refused (503), never admitted unchecked."""
        check = hold.check
        lim = principal.key_limits if check.scope == "key" else principal.team_limits
        w = window(lim.budget_period, now)
        spent = ZERO
        if self.reads is not None:
            try:
                spent = await self.reads.read(lambda engine: budget_db.recorded_spend(
                    engine, tenant=principal.tenant, team=principal.team if check.scope == "team" else None,
                    key_id=principal.key_id if check.scope == "key" else None, start=w.start, end=w.end,
                    currency=self.catalogue.currency))
            except Exception as exc:
                raise self._unavailable(exc) from None
        try:
            await self.backend.seed(check.key, to_units(spent), check.ttl_ms)
        except Exception as exc:
            raise self._unavailable(exc) from None
        self.stats.seeded += 1
        if spent:
            log.info("limits: %s budget counter for %s started at %s %s recorded", hold.label, w.id, spent,
                     self.catalogue.currency)

    # --- errors ---------------------------------------------------------------------------------

    def _rate_limited(self, check: RateCheck, retry_ms: int) -> RateLimited:
        unit = "RPM" if check.kind == "requests" else "TPM"
        wait = duration(retry_ms)
        err = RateLimited(
            f"Rate limit reached for {check.scope} on {check.kind} per min ({unit}): Limit {check.limit}, "
            f"Requested {check.cost}. Please try again in {wait}.",
            headers={"retry-after": str(max(1, math.ceil(retry_ms / 1000))),
                     f"x-ratelimit-limit-{check.kind}": str(check.limit),
                     f"x-ratelimit-remaining-{check.kind}": "0",
                     f"x-ratelimit-reset-{check.kind}": wait})
        err.type = check.kind
        return err

    def _too_large(self, check: RateCheck) -> RateLimited:
        err = RateLimited(
            f"Request too large for {check.scope} on {check.kind} per min: Limit {check.limit}, Requested "
            f"{check.cost}. Lower max_tokens or the prompt.",
            headers={"x-should-retry": "false", f"x-ratelimit-limit-{check.kind}": str(check.limit)})
        err.type = check.kind
        return err

    def _over_budget(self, check: BudgetCheck, label: str, period: str, committed: int | None) -> BudgetExceeded:
        cur = self.catalogue.currency
        per = {"day": "today", "month": "this month", "total": "in total"}.get(period, period)
        used = f" ({from_units(committed).normalize():f} {cur} spent or reserved)" if committed is not None else ""
        return BudgetExceeded(
            f"You exceeded your current quota: the {label} budget of {from_units(check.limit).normalize():f} {cur} "
            f"{per} is used up{used}; this request could cost up to {from_units(check.amount).normalize():f} {cur}.",
            headers={"x-should-retry": "false"})

    def _unavailable(self, exc: BaseException) -> LimitsUnavailable:
        now = time.monotonic()
        if now - self._last_error_log > 10:
            self._last_error_log = now
            log.warning("limits: the counters cannot be reached (%s: %s); refusing limited calls",
                        type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
        return LimitsUnavailable("The gateway cannot check rate limits and budgets right now.",
                                 headers={"retry-after": "1"})

    # --- after the call ---------------------------------------------------------------------------

    def settle(self, outcome: Outcome) -> None:
        """The step after the call (from `finish`): its admission is settled off the request path."""
        if (admission := outcome.admission) is not None:
            self._enqueue(admission, outcome)

    def _enqueue(self, admission: Admission, outcome: Outcome | None) -> None:
        admission.enqueued = time.monotonic()
        self._queue.append((admission, outcome))
        if self._wake is not None:
            self._wake.set()

    def _actual(self, admission: Admission, outcome: Outcome | None) -> tuple[int, int]:
        """(tokens, cost units) the call really used, as its usage record says (the cost only when a
        budget needs it: pricing is most of a record's making)."""
        if outcome is None or not (admission.token_counters or admission.budgets):
            return 0, 0
        if not admission.budgets:
            _, prompt, _, completion = counted_usage(outcome)
            return (0 if outcome.cache_hit else prompt + completion), 0  # a hit used no worker: no tokens
        record = build_record(outcome, self.catalogue)
        tokens = 0 if record.cache_hit else record.prompt_tokens + record.completion_tokens
        return tokens, to_units(record.cost)

    async def _settler(self) -> None:
        assert self._wake is not None
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                continue
            self._busy = True
            try:
                batch = [self._queue.popleft() for _ in range(min(SETTLE_BATCH, len(self._queue)))]
                try:
                    await self._settle(batch)
                except Exception as exc:
                    self.stats.settle_failures += 1
                    keep = [(a, o) for a, o in batch if time.monotonic() - a.enqueued < SETTLE_GIVE_UP_S]
                    if len(keep) < len(batch):
                        log.error("limits: gave up settling %d call(s) (%s); their reservations expire",
                                  len(batch) - len(keep), type(exc).__name__)
                    elif time.monotonic() - self._last_error_log > 10:
                        self._last_error_log = time.monotonic()
                        log.warning("limits: settling failed (%s); retrying", type(exc).__name__)
                    self._queue.extendleft(reversed(keep))
                    if not self._closing:
                        await asyncio.sleep(SETTLE_RETRY_S)
                    elif keep:
                        return
            finally:
                self._busy = False

    async def _settle(self, batch: list[tuple[Admission, Outcome | None]]) -> None:
        heavy = any(o is not None and needs_estimate(o) for _, o in batch)
        if heavy:  # tokenizing prompts of cancelled streams: off the event loop
            actuals = await asyncio.to_thread(lambda: [self._actual(a, o) for a, o in batch])
        else:
            actuals = [self._actual(a, o) for a, o in batch]
        rate_items: list[RateSettle] = []
        budget_items: list[BudgetSettle] = []
        holds: list[BudgetHold] = []
        for (admission, _), (tokens, cost) in zip(batch, actuals, strict=True):
            for r in admission.token_counters:
                if tokens != admission.tokens:
                    rate_items.append(RateSettle(r.key, r.limit, tokens - admission.tokens))
            for hold in admission.budgets:
                c = hold.check
                budget_items.append(BudgetSettle(c.key, admission.member, c.amount, cost, c.ttl_ms))
                holds.append(hold)
        if not rate_items and not budget_items:
            self.stats.settled += len(batch)
            return
        spent = await self.backend.settle(rate_items, budget_items)
        self.stats.settled += len(batch)
        for hold, item, after in zip(holds, budget_items, spent, strict=True):
            self._watch(hold, item.actual, after)

    def _watch(self, hold: BudgetHold, actual: int, after: int) -> None:
        """Warn once when a settlement crosses the soft threshold, and when it passes the limit."""
        limit = hold.check.limit
        before = after - actual
        soft = limit * self.soft_pct // 100
        cur = self.catalogue.currency
        if before < soft <= after and soft < limit:
            self.stats.soft_threshold_crossed += 1
            log.warning("budget: %s has spent %s of its %s %s budget (soft threshold %d%%)", hold.label,
                        from_units(after).normalize(), from_units(limit).normalize(), cur, self.soft_pct)
        if before <= limit < after:
            self.stats.overspent += 1
            log.warning("budget: %s has spent %s, past its %s %s budget (a call cost more than its estimate)",
                        hold.label, from_units(after).normalize(), from_units(limit).normalize(), cur)


def _unbounded(model: str, no_max_tokens: bool) -> InvalidRequest:
    """A call under a budget to a model the catalogue does not list, whose cost nothing in the body bounds."""
    if no_max_tokens:
        return InvalidRequest(
            f"The model `{model}` is not in the routing catalogue, so its context window is unknown: a call under "
            "a budget must set max_tokens.", param="max_tokens")
    return InvalidRequest(
        f"The model `{model}` is not in the routing catalogue, so its context window is unknown: a call under "
        "a budget may send it text content only.", param="messages")


def rate_headers(states: tuple[RateState, ...]) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers: for requests and for tokens, the counter closest to its limit."""
    tight: dict[str, RateState] = {}
    for s in states:
        t = tight.get(s.kind)
        if t is None or s.remaining < t.remaining or (s.remaining == t.remaining and s.reset_ms > t.reset_ms):
            tight[s.kind] = s
    headers: dict[str, str] = {}
    for kind, s in tight.items():
        headers[f"x-ratelimit-limit-{kind}"] = str(s.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(s.remaining, 0))
        headers[f"x-ratelimit-reset-{kind}"] = duration(s.reset_ms)
    return headers


async def start_limits(settings: Settings, catalogue: PriceCatalogue, engine: AsyncEngine | BoundedReads | None,
                       redis: Redis | None, batcher: RedisBatcher | None = None) -> Limits:
    """The app's `Limits`: counters in Redis when `redis_url` is set, else in this process. `batcher`:
    the app's auto-pipelining for `redis` (shared with the cache), else the backend makes its own."""
    backend: Backend = (RedisBackend(redis, settings.limits_key_prefix, batcher) if redis is not None
                        else MemoryBackend())
    limits = Limits(backend, catalogue, engine, soft_pct=settings.budget_soft_pct,
                    reservation_ttl_s=settings.budget_reservation_ttl_s,
                    template_tokens_per_request=settings.budget_template_tokens_per_request,
                    template_tokens_per_message=settings.budget_template_tokens_per_message)
    await limits.start()
    return limits
