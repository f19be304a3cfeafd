"""The simulated engine's scheduler and caches: running slots with a bounded FIFO queue, the
tokens a running request holds in the KV cache, and automatic prefix caching."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Live", "Overloaded", "PrefixCache", "Slots", "kv_cache_usage"]


class Overloaded(Exception):
    """The waiting queue is full (vLLM answers 503)."""


class Slots:
    """At most ``max_running`` holders; FIFO queue of at most ``max_waiting`` waiters."""

    def __init__(self, max_running: int, max_waiting: int) -> None:
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_enter(self) -> asyncio.Future[None] | None:
        """None: a slot is held now.  A future: queued, the slot is held once it resolves."""
        if self.running < self.max_running and not self._waiters:
            self.running += 1
            return None
        if len(self._waiters) >= self.max_waiting:
            raise Overloaded
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        return fut

    def abandon(self, fut: asyncio.Future[None]) -> None:
        """The waiter of ``fut`` gives up (cancelled): leave the queue or hand the slot back."""
        if fut.done() and not fut.cancelled():
            self.release()
            return
        fut.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(fut)

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes straight to the oldest waiter
                return
        self.running -= 1


@dataclass(slots=True, eq=False)
class Live:
    """A request holding a running slot (for ``vllm:kv_cache_usage_perc``)."""

    prompt_tokens: int
    output_tokens: int
    t_first: float
    tok_s: float

    def tokens_at(self, now: float) -> int:
        if now < self.t_first:
            return 0
        if self.tok_s <= 0:
            return self.output_tokens
        return min(self.output_tokens, 1 + int((now - self.t_first) / self.tok_s))


def kv_cache_usage(live: Iterable[Live], now: float, capacity: int) -> float:
    """Share of the KV cache the running requests hold at ``now`` (prompt + tokens generated so far)."""
    used = sum(r.prompt_tokens + r.tokens_at(now) for r in live)
    return min(1.0, used / capacity)


class PrefixCache:
    """Simulated automatic prefix caching: chained hashes of 256-character prompt blocks in an LRU."""

    BLOCK = 256

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity = capacity_blocks
        self._blocks: OrderedDict[bytes, None] = OrderedDict()

    def lookup(self, text: str, tokens: int) -> int:
        """Prompt tokens already cached (in proportion to the cached characters); remembers the prompt."""
        if self.capacity == 0 or not text:
            return 0
        h = hashlib.blake2b(digest_size=16)
        hit, missed = 0, False
        n = len(text) // self.BLOCK
        for i in range(n):
            h.update(text[i * self.BLOCK : (i + 1) * self.BLOCK].encode())
            key = h.digest()
            if key in self._blocks:
                self._blocks.move_to_end(key)
                hit += 0 if missed else 1
            else:
                missed = True
                self._blocks[key] = None
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)
        return tokens * hit * self.BLOCK // len(text)
