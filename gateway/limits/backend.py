"""The counters behind rate limits and budgets: what is checked, what comes back, what an admitted call
holds until it is settled, and the in-process backend. `redis_backend.py` does exactly the same in Redis
(the tests run one suite on both).

**Rate limits** are GCRA (the generic cell rate algorithm, a leaky bucket kept as one timestamp per
counter, the "theoretical arrival time"): a limit of L per minute refills one unit every 60/L seconds
and allows a burst of L. A call costs 1 request, or its estimated tokens; the tokens are settled to the
real count after the call (a refund when it used fewer). Each counter's state is one number.

**Budgets** keep two integers per budget and period, in 10^-10 units of the catalogue's currency:
`committed` (spent + reserved by calls in flight) and `spent` (settled). A call is admitted only if
`committed + its reservation <= limit`, and everything is checked before anything is taken, atomically,
so concurrent calls can never commit more than the limit. A reservation not settled within
`reservation_ttl_ms` (a process that died mid-call) is released by the next admission.

An admission or a settlement may reach Redis twice (a round trip lost with its connection is sent again):
an admission whose id already holds its reservation takes nothing again, and a settlement finds either
the reservation or the mark a released one left, else it was settled already. Budgets stay exact; a rate
counter may count such a call twice (limits.lua).

A budget counter that does not exist yet asks to be **seeded** (status SEED) with what the accounting
database already recorded for that period, so a restart (in-process backend) or an emptied Redis does
not reset a budget.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

WINDOW_US = 60_000_000  # the rate limits' period: one minute

# admit() statuses
OK, RATE_LIMITED, OVER_BUDGET, SEED, TOO_LARGE = 1, 0, 2, 3, 4


@dataclass(frozen=True, slots=True)
class RateCheck:
    key: str  # counter name (the Redis backend prefixes it)
    scope: str  # "key" | "team"
    kind: str  # "requests" | "tokens"
    limit: int  # per minute
    cost: int  # 1, or the call's estimated tokens


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    key: str
    scope: str  # "key" | "team"
    limit: int  # units
    amount: int  # the reservation, units
    ttl_ms: int  # how long the counter must live (0: for ever)


@dataclass(frozen=True, slots=True)
class RateState:
    kind: str
    scope: str
    limit: int
    remaining: int
    reset_ms: int  # until the counter is back to a full bucket


@dataclass(frozen=True, slots=True)
class AdmitResult:
    status: int
    index: int = -1  # of the check that refused (rates, then budgets, each from 0)
    retry_ms: int = 0  # RATE_LIMITED: when the call would fit
    committed: int = 0  # OVER_BUDGET: the budget's committed units
    rates: tuple[RateState, ...] = ()  # OK: each rate counter after the call


@dataclass(frozen=True, slots=True)
class RateSettle:
    key: str
    limit: int
    delta: int  # tokens: actual - estimated (negative: a refund)


@dataclass(frozen=True, slots=True)
class BudgetSettle:
    key: str
    member: str  # the reservation's id
    reserved: int
    actual: int
    ttl_ms: int


@dataclass(slots=True)
class BudgetHold:
    check: BudgetCheck
    label: str  # "team default/dev", "key key_..."


@dataclass(slots=True)
class Admission:
    """One admitted call: what to settle when it ends (kept on the call's `Outcome` until then)."""

    member: str  # the budget reservations' id
    tokens: int  # estimated
    token_counters: list[RateCheck]
    budgets: list[BudgetHold]
    headers: dict[str, str]
    received: float = 0.0
    enqueued: float = 0.0  # monotonic: when its call finished (settlements are retried for a while)


class Backend(Protocol):
    async def admit(self, rates: Sequence[RateCheck], budgets: Sequence[BudgetCheck], member: str,
                    reservation_ttl_ms: int) -> AdmitResult: ...

    async def settle(self, rates: Sequence[RateSettle], budgets: Sequence[BudgetSettle]) -> list[int]:
        """Returns each budget's spent units after its settlement."""
        ...

    async def seed(self, key: str, spent: int, ttl_ms: int) -> None: ...

    async def read(self, keys: Sequence[str]) -> list[tuple[int, int] | None]:
        """(spent, committed) of each budget counter; None when it does not exist."""
        ...

    async def close(self) -> None: ...


def now_us() -> int:
    return time.time_ns() // 1000


# --- in process ----------------------------------------------------------------------------------


@dataclass
class _Budget:
    spent: int = 0
    committed: int = 0
    seeded: bool = False
    expires_us: int = 0  # 0: never
    reservations: dict[str, tuple[int, int]] = field(default_factory=dict)  # member -> (amount, expiry µs)
    expiries: list[tuple[int, str]] = field(default_factory=list)  # heap of (expiry µs, member)
    released: set[str] = field(default_factory=set)  # members whose reservation expired, not yet settled

    def release_expired(self, now: int) -> None:
        heap = self.expiries
        while heap and heap[0][0] <= now:
            expiry, member = heapq.heappop(heap)
            held = self.reservations.get(member)
            if held is not None and held[1] == expiry:  # not settled meanwhile
                del self.reservations[member]
                self.committed -= held[0]
                self.released.add(member)


class MemoryBackend:
    """One process's counters. Same semantics as the Redis script; its steps never await, so each
    call is atomic on the event loop."""

    def __init__(self) -> None:
        self._tats: dict[str, tuple[int, int]] = {}  # key -> (tat µs, expiry µs)
        self._budgets: dict[str, _Budget] = {}
        self._sweep_at = 0

    def _tat(self, key: str, now: int) -> int | None:
        v = self._tats.get(key)
        if v is None or v[1] <= now:
            return None
        return v[0]

    def _budget(self, key: str, now: int) -> _Budget | None:
        b = self._budgets.get(key)
        if b is not None and b.expires_us and b.expires_us <= now:
            del self._budgets[key]
            return None
        return b

    def _sweep(self, now: int) -> None:
        """Drop expired counters now and then, as Redis expires keys."""
        if now < self._sweep_at:
            return
        self._sweep_at = now + 10_000_000
        for k in [k for k, (_, exp) in self._tats.items() if exp <= now]:
            del self._tats[k]
        for k in [k for k, b in self._budgets.items() if b.expires_us and b.expires_us <= now]:
            del self._budgets[k]

    async def admit(self, rates: Sequence[RateCheck], budgets: Sequence[BudgetCheck], member: str,
                    reservation_ttl_ms: int) -> AdmitResult:
        now = now_us()
        self._sweep(now)
        new_tats: list[int] = []
        states: list[RateState] = []
        for i, r in enumerate(rates):
            if r.cost > r.limit:
                return AdmitResult(TOO_LARGE, i)
            interval = WINDOW_US / r.limit
            tat = max(self._tat(r.key, now) or now, now)
            new_tat = math.floor(tat + r.cost * interval)
            allow_at = new_tat - WINDOW_US
            if allow_at > now:
                return AdmitResult(RATE_LIMITED, i, retry_ms=-(-(allow_at - now) // 1000))
            new_tats.append(new_tat)
            states.append(_state(r, new_tat, now))
        if budgets and (first := self._budget(budgets[0].key, now)) is not None and member in first.reservations:
            return AdmitResult(OK, rates=tuple(self._rate_state(r, now) for r in rates))  # taken already
        for j, b in enumerate(budgets):
            cur = self._budget(b.key, now)
            if cur is not None:
                cur.release_expired(now)
            if cur is None or not cur.seeded:
                return AdmitResult(SEED, j)
            if cur.committed > b.limit - b.amount:
                return AdmitResult(OVER_BUDGET, j, committed=cur.committed)
        for r, new_tat in zip(rates, new_tats, strict=True):
            self._tats[r.key] = (new_tat, new_tat + 1_000_000)
        for b in budgets:
            cur = self._budgets[b.key]
            cur.committed += b.amount
            expiry = now + reservation_ttl_ms * 1000
            cur.reservations[member] = (b.amount, expiry)
            heapq.heappush(cur.expiries, (expiry, member))
            if b.ttl_ms:
                cur.expires_us = now + b.ttl_ms * 1000
        return AdmitResult(OK, rates=tuple(states))

    async def settle(self, rates: Sequence[RateSettle], budgets: Sequence[BudgetSettle]) -> list[int]:
        now = now_us()
        for r in rates:
            interval = WINDOW_US / r.limit
            tat = self._tat(r.key, now)
            if tat is not None:
                new = math.floor(tat + r.delta * interval)
                if new > now:
                    self._tats[r.key] = (new, new + 1_000_000)
                else:
                    self._tats.pop(r.key, None)
            elif r.delta > 0:
                new = math.floor(now + r.delta * interval)
                self._tats[r.key] = (new, new + 1_000_000)
        spent = []
        for b in budgets:
            cur = self._budget(b.key, now)
            if cur is None:  # gone with its period (or never seeded): nothing to settle
                spent.append(0)
                continue
            cur.release_expired(now)
            held = cur.reservations.pop(b.member, None)
            if held is None and b.member not in cur.released:
                spent.append(cur.spent)  # settled already
                continue
            cur.released.discard(b.member)
            cur.committed += b.actual - (held[0] if held is not None else 0)
            cur.spent += b.actual
            if b.ttl_ms:
                cur.expires_us = now + b.ttl_ms * 1000
            spent.append(cur.spent)
        return spent

    def _rate_state(self, r: RateCheck, now: int) -> RateState:
        return _state(r, max(self._tat(r.key, now) or now, now), now)

    async def seed(self, key: str, spent: int, ttl_ms: int) -> None:
        now = now_us()
        cur = self._budget(key, now)
        if cur is None:
            cur = self._budgets[key] = _Budget()
        if not cur.seeded:
            cur.seeded = True
            cur.spent += spent
            cur.committed += spent
            if ttl_ms:
                cur.expires_us = now + ttl_ms * 1000

    async def read(self, keys: Sequence[str]) -> list[tuple[int, int] | None]:
        now = now_us()
        out: list[tuple[int, int] | None] = []
        for k in keys:
            b = self._budget(k, now)
            out.append((b.spent, b.committed) if b is not None else None)
        return out

    async def close(self) -> None:
        return None


def _state(r: RateCheck, tat: int, now: int) -> RateState:
    """A rate counter's state, its theoretical arrival time at `tat`."""
    interval = WINDOW_US / r.limit
    return RateState(r.kind, r.scope, r.limit, math.floor((WINDOW_US - (tat - now)) / interval),
                     -(-(tat - now) // 1000))
