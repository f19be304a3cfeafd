"""Pools of replicas, their live state, the choice of a replica for one call, admission, and how busy a
pool is.

The choice functions are pure: replicas (with the state last seen) and `now` in, a replica out.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from router.errors import PoolOverloaded
from workers.breaker import Breaker
from workers.config import Runner

Balance = Literal["least_load", "round_robin"]


@dataclass(eq=False)
class Replica:
    url: str
    pool: str
    healthy: bool = False  # set by health checks; a refused connection clears it at once
    # When a health check last ended, and last found it healthy (monotonic): how long it has failed them.
    checked_at: float = 0.0
    healthy_at: float = 0.0
    late: int = 0  # health checks in a row that timed out (a healthy replica rides out one: workers/health.py)
    in_flight: int = 0  # calls this gateway process has open on it
    # From the replica's /metrics (vLLM's gauges), as last polled; other gateways' calls included.
    running: float = 0.0
    waiting: float = 0.0
    kv_cache: float = 0.0  # 0..1
    last_error: str | None = None
    breaker: Breaker = field(default_factory=Breaker)
    # From the replica's /v1/models, as last fetched (kept while it is away): the ids it lists (None: it never
    # answered) and the entry for its pool's model, as the worker gave it (max_model_len, root, ...).
    lists: tuple[str, ...] | None = None
    card: dict[str, Any] | None = None

    def load(self) -> float:
        """Work queued on the replica: our own count is live, the engine's covers other gateways too."""
        return max(float(self.in_flight), self.running + self.waiting) + self.waiting + 2.0 * self.kv_cache


@dataclass(frozen=True)
class Affinity:
    """Requests sharing the first `prefix_chars` of their prompt go to the same replica (vLLM's prefix
    cache), unless its load exceeds the least loaded replica's by more than `max_extra_load`."""

    prefix_chars: int = 2000
    max_extra_load: float = 4.0


def least_loaded(candidates: Sequence[Replica], turn: int) -> Replica | None:
    best: Replica | None = None
    n = len(candidates)
    for i in range(n):  # start at a rotating index so equal loads spread evenly
        r = candidates[(turn + i) % n]
        if best is None or r.load() < best.load():
            best = r
    return best


def _rendezvous(key: bytes, url: str) -> bytes:
    return hashlib.blake2b(key + url.encode(), digest_size=8).digest()


def by_affinity(candidates: Sequence[Replica], key: bytes, affinity: Affinity, turn: int) -> Replica | None:
    if not candidates:
        return None
    # Rendezvous hashing: a key keeps its replica while other replicas come and go.
    home = max(candidates, key=lambda r: _rendezvous(key, r.url))
    if home.load() <= min(r.load() for r in candidates) + affinity.max_extra_load:
        return home
    return least_loaded(candidates, turn)


@dataclass(eq=False)
class Pool:
    name: str
    model: str
    replicas: list[Replica]
    headers: dict[str, str] = field(default_factory=dict)  # sent with every call (worker API key)
    balance: Balance = "least_load"
    affinity: Affinity | None = None
    gate: Gate | None = None
    runner: Runner = "generate"  # `pooling`: an embedding model; chat and completions never go there
    _turn: itertools.count[int] = field(default_factory=itertools.count, repr=False)

    @property
    def healthy_count(self) -> int:
        return sum(r.healthy for r in self.replicas)

    def has_candidate(self, exclude: Iterable[Replica] = ()) -> bool:
        now = time.monotonic()
        excluded = set(exclude)
        return any(
            r.healthy and r not in excluded and (r.breaker.closed or r.breaker.ready_to_probe(now))
            for r in self.replicas
        )

    def model_card(self) -> dict[str, Any] | None:
        """The workers' /v1/models entry for this pool's model: a healthy replica's, else any replica's."""
        cards = [r.card for r in sorted(self.replicas, key=lambda r: not r.healthy) if r.card is not None]
        return cards[0] if cards else None

    def max_model_len(self) -> int | None:
        """The smallest window the replicas told (a call may go to any of them); None when none did."""
        lens = [n for r in self.replicas if r.card is not None and isinstance(n := r.card.get("max_model_len"), int)]
        return min(lens) if lens else None

    def model_unlisted(self) -> bool:
        """Replicas answered /v1/models and none lists this pool's model (a misnamed pool)."""
        answered = [r.lists for r in self.replicas if r.lists is not None]
        return bool(answered) and all(self.model not in ids for ids in answered)

    def choose(self, exclude: Iterable[Replica] = (), prefix: bytes | None = None,
               pinned: str | None = None) -> Replica | None:
        """`pinned`: the URL of the one replica the call may go to (it holds state the call needs), if any."""
        now = time.monotonic()
        excluded = set(exclude)
        if pinned is not None:
            return next((r for r in self.replicas if r.url == pinned and r.healthy and r not in excluded), None)
        live = [r for r in self.replicas if r.healthy and r not in excluded]
        for r in live:
            # A replica whose circuit time out has passed gets exactly one call as its probe.
            if r.breaker.ready_to_probe(now) and r.breaker.allows(now):
                return r
        candidates = [r for r in live if r.breaker.closed]
        if not candidates:
            return None
        turn = next(self._turn)
        if self.balance == "round_robin":
            return candidates[turn % len(candidates)]
        if self.affinity is not None and prefix:
            return by_affinity(candidates, prefix[: self.affinity.prefix_chars], self.affinity, turn)
        return least_loaded(candidates, turn)


class Gate:
    """Admission control: at most `limit` calls in flight on a pool; others wait at most `max_wait_s`
    in a queue of at most `max_queue`, then are refused. Never an unbounded queue."""

    def __init__(self, pool: str, limit: int, max_queue: int, max_wait_s: float) -> None:
        self.pool, self.limit, self.max_queue, self.max_wait_s = pool, limit, max_queue, max_wait_s
        self.active = 0
        self._waiters: list[asyncio.Future[None]] = []

    def _refuse(self, why: str) -> PoolOverloaded:
        return PoolOverloaded(
            f"Pool `{self.pool}` is at capacity ({why}); retry shortly.", headers={"retry-after": "1"}
        )

    async def enter(self) -> None:
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return
        if len(self._waiters) >= self.max_queue:
            raise self._refuse(f"{self.limit} in flight, {len(self._waiters)} waiting")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.max_wait_s)
        except TimeoutError:
            if waiter.done():  # granted just as the wait ran out: keep the slot
                return
            waiter.cancel()
            raise self._refuse(f"waited {self.max_wait_s:g}s") from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # granted, but our caller went away: pass the slot on
            else:
                waiter.cancel()
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def leave(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the next waiter
                return
        self.active -= 1


# With no admission gate, a pool counts as full at this many calls per replica (a guess).
UNGATED_CALLS_PER_REPLICA = 32


def pool_load(pool: Pool) -> float:
    """How busy a pool is: 0 = idle, 1 = as busy as it may be (its gate's limit, else the guess above)."""
    capacity = pool.gate.limit if pool.gate else UNGATED_CALLS_PER_REPLICA * max(1, len(pool.replicas))
    return min(1.0, sum(r.load() for r in pool.replicas) / capacity)


@dataclass
class Pools:
    """All pools, found by the model they serve."""

    pools: list[Pool]

    def __post_init__(self) -> None:
        self.by_model = {p.model: p for p in self.pools}
        self.by_name = {p.name: p for p in self.pools}

    def replicas(self) -> Iterable[Replica]:
        for pool in self.pools:
            yield from pool.replicas

    def ready(self, every: bool = True) -> bool:
        """Every pool (or, with `every` false, at least one) has a healthy replica."""
        healthy = (p.healthy_count > 0 for p in self.pools)
        return all(healthy) if every else any(healthy)
