"""One request's dealings with the response cache (`Ticket`): what the lookup found, and what is left to do
when the call is over (store the answer, release the single-flight lock). The cache's step after the call
(`ResponseCache.store`, gateway/cache/service.py) reads it from the call's `Outcome`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from gateway.cache.entry import Entry, RawEntry, StreamCollector

Status = Literal["hit", "miss", "bypass"]


@dataclass(slots=True)
class Ticket:
    status: Status
    kind: str = "chat"  # the call's kind: a chat or completion answer is an `Entry`, any other a `RawEntry`
    key: str | None = None  # None: a bypass
    model: str | None = None  # the routed model the key is for: only its answers are stored
    ttl_s: float = 0.0
    store: bool = False  # store the answer when the call completes
    token: str | None = None  # the single-flight lock, when this request holds it
    entry: Entry | RawEntry | None = None  # a hit
    collector: StreamCollector | None = None
    body: bytes | None = None
    lookup: tuple[str, Awaitable[tuple[bytes | None, bool]]] | None = None  # (lock token, answer) until resolved

    def stream_tap(self) -> Callable[[bytes], None] | None:
        """What the relay hands each batch of events to; None (no parsing at all) unless storable."""
        return self.collector.feed if self.collector is not None else None

    def answer(self, body: bytes) -> None:
        """The whole body of a non-streaming answer."""
        if self.store:
            self.body = body


BYPASS = Ticket("bypass")
