"""Metrics: what `GET /metrics` shows, in Prometheus' text format, from a registry of the app's own.

Three sources, each at its cheapest place:
- the request path, once per call when it finishes (`RequestMetrics.observe`): a counter and two
  histograms, through label children cached by their label values (one dict lookup per call);
- the recorder, off the request path, as it builds each usage record (`UsageMetrics.observe`): tokens,
  cost and savings by tenant, team and model, summed as `Decimal` and turned into floats only when scraped;
- scrape time (`StateCollector`): replicas, pools, the response cache, the recorder and its spool,
  limits and budgets, read from the live objects; nothing is kept for them in between.

Labels are bounded: models, pools, rules and replicas come from the configuration and the policy (a
model a client asks for that does not exist is `unknown`), statuses from a fixed list, tenants and teams
from the keys an admin made. Never a request id, a key, or text a client sent.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting.recorder import Recorder
from gateway.accounting.records import UsageRecord
from gateway.auth.service import Auth
from gateway.cache.service import ResponseCache
from gateway.learning.shadow.service import Shadow
from gateway.limits.budgets import BudgetRow, budget_rows
from gateway.limits.service import Limits, from_units
from gateway.outcome import Outcome, call_status
from gateway.routing import PolicyStore
from workers.pool import Pools
from workers.supervisor import Supervisor

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPERATIONS = {"chat": "chat", "completion": "text_completion"}
# Seconds: from a cache hit (~1 ms) to a long generation (upstream_timeout_s defaults to 300 s).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Series:
    """The label children one kind of call updates."""

    __slots__ = ("duration", "requests", "ttft")

    def __init__(self, requests: Any, duration: Any, ttft: Any) -> None:
        self.requests, self.duration, self.ttft = requests, duration, ttft


class RequestMetrics:
    """Per call, on the request path: a dict lookup, a counter, two histogram observations."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "gateway_requests", "Calls to the OpenAI endpoints, by operation, routing rule, routed model, pool, "
            "outcome (as accounting records it) and HTTP status.",
            ("operation", "route", "model", "pool", "status", "code"), registry=registry)
        self.duration = Histogram(
            "gateway_request_duration_seconds", "From the request's arrival to its last byte (a stream's end).",
            ("operation", "model", "stream", "cache"), buckets=LATENCY_BUCKETS, registry=registry)
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds", "From the request's arrival to the answer's first byte "
            "(a stream's first event; a whole body when not streamed).",
            ("operation", "model", "stream", "cache"), buckets=TTFT_BUCKETS, registry=registry)
        self.auth_rejected = Counter(
            "gateway_auth_rejected", "Calls refused by the API key check, by error code.", ("code", "http_status"),
            registry=registry)
        self._series: dict[tuple[Any, ...], _Series] = {}

    def observe(self, o: Outcome) -> None:
        status = call_status(o)
        key = (o.kind, o.policy_rule, o.model, o.pool, status, o.status, o.stream, o.cache)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = self._new(key)
        series.requests.inc()
        if o.finished is not None:
            series.duration.observe(o.finished - o.started)
        if o.first_byte is not None:
            series.ttft.observe(o.first_byte - o.started)

    def _new(self, key: tuple[Any, ...]) -> _Series:
        kind, rule, model, pool, status, code, stream, cache = key
        operation = OPERATIONS.get(kind, kind or "unknown")
        model = model or "unknown"  # the call ended before routing chose a model (an unknown one included)
        stream_label = "true" if stream else "false"
        cache_label = cache or "none"
        return _Series(
            self.requests.labels(operation, rule or "none", model, pool or "none", status, str(code or 0)),
            self.duration.labels(operation, model, stream_label, cache_label),
            self.ttft.labels(operation, model, stream_label, cache_label),
        )


class UsageMetrics(Collector):
    """Tokens, cost and savings of every usage record, as the recorder builds it (off the request path,
    possibly on a worker thread: hence the lock). Money stays `Decimal` until a scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str, str, str], int] = {}
        self._cost: dict[tuple[str, str, str, str], Decimal] = {}
        self._saving: dict[tuple[str, str, str, str, str], Decimal] = {}
        self._records: dict[tuple[str, str], int] = {}

    def observe(self, r: UsageRecord) -> None:
        with self._lock:
            src = (r.status, r.usage_source)
            self._records[src] = self._records.get(src, 0) + 1
            if r.routed_model is None:  # refused before routing: no tokens, no cost
                return
            who = (r.tenant, r.team or "", r.routed_model)
            if not r.cache_hit:  # tokens the workers processed; a cache hit's are the stored answer's
                for kind, n in (("input", r.prompt_tokens), ("output", r.completion_tokens),
                                ("cached_input", r.cached_tokens)):
                    if n:
                        k = (*who, kind)
                        self._tokens[k] = self._tokens.get(k, 0) + n
            c = (*who, r.currency)
            self._cost[c] = self._cost.get(c, Decimal(0)) + r.cost
            for kind, amount in (("routing", r.routing_saving), ("cache", r.cache_saving)):
                if amount:
                    s = (*who, r.currency, kind)
                    self._saving[s] = self._saving.get(s, Decimal(0)) + amount

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            tokens, cost = dict(self._tokens), dict(self._cost)
            saving, records = dict(self._saving), dict(self._records)
        t = CounterMetricFamily("gateway_usage_tokens", "Tokens the workers processed, as usage records count "
                                "them (the workers' usage; an estimate for streams cut short), by type.",
                                labels=("tenant", "team", "model", "type"))
        for k, v in sorted(tokens.items()):
            t.add_metric(k, v)
        yield t
        c = CounterMetricFamily("gateway_cost", "What calls cost (the accounting's exact figure, in the price "
                                "catalogue's currency), by tenant, team and model.",
                                labels=("tenant", "team", "model", "currency"))
        for k, amount in sorted(cost.items()):
            c.add_metric(k, float(amount))
        yield c
        s = CounterMetricFamily("gateway_savings", "What routing (vs the reference model) and the response "
                                "cache saved.", labels=("tenant", "team", "model", "currency", "kind"))
        for sk, amount in sorted(saving.items()):
            s.add_metric(sk, float(amount))
        yield s
        n = CounterMetricFamily("gateway_usage_records", "Usage records built, by status and usage source.",
                                labels=("status", "source"))
        for rk, count in sorted(records.items()):
            n.add_metric(rk, count)
        yield n


def _counter(name: str, help_: str, value: float, labels: tuple[str, ...] = (),
             samples: Sequence[tuple[Sequence[str], float]] | None = None) -> CounterMetricFamily:
    m = CounterMetricFamily(name, help_, labels=labels)
    for values, v in samples if samples is not None else [((), value)]:
        m.add_metric(values, v)
    return m


def _gauge(name: str, help_: str, labels: tuple[str, ...], samples: Sequence[tuple[Sequence[str], float]]
           ) -> GaugeMetricFamily:
    m = GaugeMetricFamily(name, help_, labels=labels)
    for values, v in samples:
        m.add_metric(values, v)
    return m


@dataclass(frozen=True)
class Sources:
    """The running gateway's objects a scrape reads."""

    pools: Pools
    supervisor: Supervisor
    policies: PolicyStore
    recorder: Recorder
    engine: AsyncEngine  # the accounting database (budgets' recorded spend)
    currency: str  # the price catalogue's
    cache: ResponseCache | None = None
    limits: Limits | None = None
    auth: Auth | None = None
    shadow: Shadow | None = None


class StateCollector(Collector):
    """Everything read at scrape time from the running gateway (on its event loop: the /metrics handlers)."""

    def __init__(self) -> None:
        self.sources: Sources | None = None  # None: nothing attached yet (the app is starting)
        self.budgets: list[BudgetRow] = []
        self.budgets_at = 0.0  # monotonic time of the last refresh (0: never)
        self.budget_errors = 0

    def collect(self) -> Iterator[Metric]:
        src = self.sources
        if src is None:
            return
        yield from self._replicas(src)
        yield from self._cache(src)
        yield from self._recorder(src)
        yield from self._limits(src)
        if src.auth is not None:
            yield _counter("gateway_auth_key_lookups", "API key lookups that asked the database (cache misses).",
                           src.auth.lookups)
        yield from self._shadow(src)
        yield _gauge("gateway_policy_reload_failed", "1 when the last policy reload was refused (the last good "
                     "policy stays in force).", (), [((), 1.0 if src.policies.last_error else 0.0)])

    def _replicas(self, src: Sources) -> Iterator[Metric]:
        now = time.monotonic()
        managed = src.supervisor.statuses()
        labels = ("pool", "model", "replica")
        rows: dict[str, list[tuple[tuple[str, ...], float]]] = {
            k: [] for k in ("healthy", "in_flight", "running", "waiting", "kv", "open", "load", "restarts")}
        gates: dict[str, list[tuple[tuple[str, ...], float]]] = {"active": [], "queued": [], "limit": []}
        for pool in src.pools.pools:
            for r in pool.replicas:
                v = (pool.name, pool.model, r.url)
                rows["healthy"].append((v, 1.0 if r.healthy else 0.0))
                rows["in_flight"].append((v, float(r.in_flight)))
                rows["running"].append((v, r.running))
                rows["waiting"].append((v, r.waiting))
                rows["kv"].append((v, r.kv_cache))
                rows["open"].append((v, 1.0 if r.breaker.is_open(now) or r.breaker.ready_to_probe(now) else 0.0))
                rows["load"].append((v, r.load()))
                if (m := managed.get(r.url)) is not None and isinstance(restarts := m.get("restarts"), int):
                    rows["restarts"].append((v, float(restarts)))
            if pool.gate is not None:
                g = pool.gate
                gates["active"].append(((pool.name,), float(g.active)))
                gates["queued"].append(((pool.name,), float(len(g._waiters))))
                gates["limit"].append(((pool.name,), float(g.limit)))
        yield _gauge("gateway_replica_healthy", "1 when the replica's /health answers 200.", labels, rows["healthy"])
        yield _gauge("gateway_replica_in_flight", "Calls this gateway process has open on the replica.", labels,
                     rows["in_flight"])
        yield _gauge("gateway_replica_running", "The engine's running requests (vllm:num_requests_running, as "
                     "last polled).", labels, rows["running"])
        yield _gauge("gateway_replica_waiting", "The engine's waiting requests (vllm:num_requests_waiting).",
                     labels, rows["waiting"])
        yield _gauge("gateway_replica_kv_cache_usage_ratio", "The engine's KV-cache usage, 0 to 1 "
                     "(vllm:kv_cache_usage_perc).", labels, rows["kv"])
        yield _gauge("gateway_replica_circuit_open", "1 while the replica's circuit breaker keeps it out "
                     "(open, or half-open waiting for its probe).", labels, rows["open"])
        yield _gauge("gateway_replica_load", "The load replica choice compares (docs/worker-pools.md).", labels,
                     rows["load"])
        yield _gauge("gateway_replica_restarts", "Restarts of a replica the gateway launched, within its "
                     "restart window.", labels, rows["restarts"])
        yield _gauge("gateway_pool_admission_in_flight", "Calls holding a slot of the pool's admission gate.",
                     ("pool",), gates["active"])
        yield _gauge("gateway_pool_admission_queued", "Calls waiting for a slot of the pool's admission gate.",
                     ("pool",), gates["queued"])
        yield _gauge("gateway_pool_admission_limit", "The pool's max_in_flight.", ("pool",), gates["limit"])

    def _cache(self, src: Sources) -> Iterator[Metric]:
        cache = src.cache
        if cache is None:
            return
        c = cache.counts
        yield _counter("gateway_cache_lookups", "What the response cache did with a call (x-gateway-cache).", 0,
                       ("result",), [(("hit",), c["hits"]), (("miss",), c["misses"]), (("bypass",), c["bypasses"])])
        yield _counter("gateway_cache_stores", "Answers stored in the response cache.", c["stores"])
        yield _counter("gateway_cache_not_stored", "Complete answers that could not be stored (too large, not "
                       "cacheable).", c["not_stored"])
        yield _counter("gateway_cache_waits", "Calls that waited for an identical call's answer (single flight).",
                       c["waits"])
        yield _counter("gateway_cache_errors", "Response cache backend errors (each makes calls bypass the cache "
                       "for cache_retry_s).", c["errors"])
        yield _gauge("gateway_cache_up", "1 when the response cache's backend answers.", ("backend",),
                     [((cache.backend_name,), 0.0 if cache.ok is False else 1.0)])

    def _recorder(self, src: Sources) -> Iterator[Metric]:
        rec = src.recorder
        yield _gauge("gateway_recorder_queue_depth", "Usage records in memory, waiting to be written.", (),
                     [((), float(rec.queued))])
        files, records, size = rec.spool.usage()
        yield _gauge("gateway_recorder_spool_files", "Spool files waiting for the database.", (), [((), files)])
        yield _gauge("gateway_recorder_spool_records", "Usage records in the spool, waiting for the database.", (),
                     [((), records)])
        yield _gauge("gateway_recorder_spool_bytes", "Size of the spool.", (), [((), size)])
        yield _gauge("gateway_recorder_database_up", "1 when the accounting database takes writes.", (),
                     [((), 1.0 if rec.database_ok else 0.0)])
        s = rec.stats
        help_ = {
            "enqueued": "Usage records handed to the recorder.",
            "written": "Usage records inserted into the database.",
            "spooled": "Usage records written to the spool.",
            "replayed": "Usage records inserted from the spool.",
            "overflowed": "Usage records moved to the spool because the in-memory queue was full.",
            "dead_lettered": "Usage records the database refused (kept in the dead-letter file).",
            "incomplete": "Incomplete records written from a dead process's journal (calls it had at a worker).",
            "batches": "Batches written to the database.",
            "db_failures": "Failed database writes (the records went to the spool).",
        }
        for f in fields(s):
            yield _counter(f"gateway_recorder_{f.name}", help_.get(f.name, f.name), getattr(s, f.name))

    def _shadow(self, src: Sources) -> Iterator[Metric]:
        shadow = src.shadow
        if shadow is None:
            return
        s = shadow.stats
        yield _counter("gateway_shadow_jobs", "Shadow evaluations of routed calls: sampled (a call qualified), "
                       "completed (both scores stored), failed (a call, the judge or the database failed).", 0,
                       ("result",), [(("sampled",), s.sampled), (("completed",), s.completed),
                                     (("failed",), s.failed)])
        yield _counter("gateway_shadow_dropped", "Sampled calls not evaluated, by reason: queue_full, budget (the "
                       "daily budget reached), load (the reference pool too busy), answer (no text, or a stream "
                       "over 256 KB), shutdown.", 0, ("reason",), [((r,), n) for r, n in s.dropped.items()])
        yield _counter("gateway_shadow_verdicts_unparsable", "Judge verdicts without scores a and b from 0 to 10.",
                       s.unparsable)
        yield _gauge("gateway_shadow_queue_depth", "Shadow jobs waiting to run.", (),
                     [((), float(shadow.queue.qsize()))])
        yield _gauge("gateway_shadow_spend_today", "Today's shadow and judge spend (UTC day) as last read, in the "
                     "price catalogue's currency.", ("currency",),
                     [((src.currency,), float(shadow.spent_today))])

    def _limits(self, src: Sources) -> Iterator[Metric]:
        limits = src.limits
        if limits is None:
            return
        s = limits.stats
        help_ = {
            "admitted": "Calls of limited keys admitted.",
            "rate_limited": "Calls refused by a rate limit (429).",
            "over_budget": "Calls refused by a budget (429 insufficient_quota).",
            "soft_threshold_crossed": "Budgets that crossed their soft threshold.",
            "overspent": "Settlements that took a budget past its limit.",
            "settled": "Calls whose reservations were settled.",
            "settle_failures": "Failed settlement batches (retried).",
            "seeded": "Budget counters started from the accounting database.",
        }
        for f in fields(s):
            yield _counter(f"gateway_limits_{f.name}", help_.get(f.name, f.name), getattr(s, f.name))
        labels = ("scope", "tenant", "team", "key_id", "period", "currency")
        limit, spent, reserved = [], [], []
        for r in self.budgets:
            v = (r.scope, r.tenant, r.team, r.key_id or "", r.period, r.currency)
            limit.append((v, float(r.limit)))
            spent.append((v, float(r.spent)))
            reserved.append((v, float(r.live_reserved or 0)))
        yield _gauge("gateway_budget_limit", "Each budget's limit for its current period.", labels, limit)
        yield _gauge("gateway_budget_spent", "Spent in the budget's current period (recorded, or the live counter "
                     "when it is ahead).", labels, spent)
        yield _gauge("gateway_budget_reserved", "Reserved by calls in flight against the budget.", labels, reserved)
        yield _counter("gateway_budget_refresh_errors", "Failed refreshes of the budget gauges.", self.budget_errors)


class Metrics:
    """The app's metrics: its own registry (never prometheus_client's global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = RequestMetrics(self.registry)
        self.usage = UsageMetrics()
        self.registry.register(self.usage)
        self.state = StateCollector()
        self.registry.register(self.state)

    def attach(self, sources: Sources) -> None:
        """What scrapes read from now on (the app's lifespan attaches its services once they run)."""
        self.state.sources = sources

    async def refresh_budgets(self, every_s: float, timeout_s: float = 5.0) -> None:
        """Re-read the budgets (the database's list and spend, the live counters) when older than `every_s`."""
        state = self.state
        src = state.sources
        if src is None or src.limits is None or (state.budgets_at and time.monotonic() - state.budgets_at < every_s):
            return
        state.budgets_at = time.monotonic()
        limits = src.limits
        try:
            async with asyncio.timeout(timeout_s):
                rows = await budget_rows(src.engine, src.currency, limits.soft_pct)
                live = await limits.backend.read([r.counter for r in rows]) if rows else []
        except Exception:
            state.budget_errors += 1
            return
        for row, counters in zip(rows, live, strict=True):
            if counters is not None:
                spent, committed = counters
                row.live_spent, row.live_reserved = from_units(spent), from_units(max(committed - spent, 0))
        state.budgets = rows

    def collect(self) -> Iterator[Metric]:
        """The registry's metrics without the `_created` series (start times nobody graphs)."""
        for m in self.registry.collect():
            m.samples = [x for x in m.samples if not x.name.endswith("_created")]
            yield m

    def render(self) -> bytes:
        return generate_latest(self)  # anything with collect() will do
