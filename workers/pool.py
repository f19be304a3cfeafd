"""Pools of replicas and their live state, and the choice of a replica for one call."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(eq=False)
class Replica:
    url: str
    pool: str
    healthy: bool = False  # set by health checks; a refused connection clears it at once
    in_flight: int = 0  # calls this gateway process has open on it
    last_error: str | None = None


@dataclass(eq=False)
class Pool:
    name: str
    model: str
    replicas: list[Replica]
    headers: dict[str, str] = field(default_factory=dict)  # sent with every call (worker API key)
    _turn: itertools.count[int] = field(default_factory=itertools.count, repr=False)

    @property
    def healthy_count(self) -> int:
        return sum(r.healthy for r in self.replicas)

    def choose(self, exclude: Iterable[Replica] = ()) -> Replica | None:
        """The healthy replica with the fewest calls in flight; ties rotate so load spreads."""
        return least_loaded(self.replicas, set(exclude), next(self._turn))


def least_loaded(replicas: Sequence[Replica], exclude: set[Replica], turn: int) -> Replica | None:
    best: Replica | None = None
    n = len(replicas)
    for i in range(n):
        r = replicas[(turn + i) % n]
        if r.healthy and r not in exclude and (best is None or r.in_flight < best.in_flight):
            best = r
    return best


@dataclass
class Pools:
    """All pools, found by the model they serve."""

    pools: list[Pool]

    def __post_init__(self) -> None:
        self.by_model = {p.model: p for p in self.pools}

    def replicas(self) -> Iterable[Replica]:
        for pool in self.pools:
            yield from pool.replicas

    def ready(self) -> bool:
        return all(p.healthy_count > 0 for p in self.pools)
