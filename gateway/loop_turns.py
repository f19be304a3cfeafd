"""Long loops on the event loop (building a batch of usage records, encoding its rows) give way to the
requests after a slice of *time*, not after a number of items.

A loop that yielded every N items gets N items done per turn of the event loop; under load the loop
turns less often (each turn runs many requests' steps), so that loop's share shrank with the load and
the recorder fell behind (under a load of cache hits its buffer filled and spooled).
A time budget per turn keeps every stall short (`TURN_S`) and the share steady: `TURN_S` per turn.
"""

from __future__ import annotations

import asyncio
import time

TURN_S = 0.0005  # the longest such a loop holds the event loop between two yields


class Turns:
    """`await turns.pause()` between items: yields to the event loop once `budget_s` has passed since
    the last yield (one `perf_counter()` call otherwise)."""

    __slots__ = ("_since", "budget_s")

    def __init__(self, budget_s: float = TURN_S) -> None:
        self.budget_s = budget_s
        self._since = time.perf_counter()

    async def pause(self) -> None:
        if time.perf_counter() - self._since >= self.budget_s:
            await asyncio.sleep(0)
            self._since = time.perf_counter()
