"""Texts a shadow job reads, in memory only (never stored or logged): the answer of a call, from its JSON
body or its relayed stream events, and the question a judge is shown; `Watch` keeps a sampled call's
request and answer on its `Outcome` until the call is over."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from gateway.inference.sse import EVENT_END
from router.classify import Kind

MAX_TAP_BYTES = 256 * 1024  # a streamed answer longer than this is not evaluated


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    message: _Message | None = None  # chat, JSON
    delta: _Message | None = None  # chat, stream
    text: str | None = None  # completion


class _Answer(msgspec.Struct):
    choices: list[_Choice] = []


_decode = msgspec.json.Decoder(_Answer).decode


def _piece(kind: Kind, choice: _Choice) -> str | None:
    if kind == "completion":
        return choice.text
    message = choice.message or choice.delta
    return message.content if message is not None else None


def body_text(kind: Kind, body: bytes) -> str | None:
    """The first choice's text of a JSON answer; None when it has none (a tool call) or is not an answer."""
    try:
        answer = _decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return next((_piece(kind, c) for c in answer.choices if c.index == 0), None)


def stream_text(kind: Kind, events: Iterable[bytes]) -> str | None:
    """The first choice's text assembled from an SSE stream's events; None when no event carried any."""
    parts: list[str] = []
    found = False
    for event in b"".join(events).split(EVENT_END):
        if not event.startswith(b"data: {"):
            continue  # [DONE], comments
        try:
            chunk = _decode(event[6:])
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        for c in chunk.choices:
            if c.index == 0 and (piece := _piece(kind, c)) is not None:
                parts.append(piece)
                found = True
    return "".join(parts) if found else None


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def question(kind: Kind, body: dict[str, Any]) -> str:
    """What the user asked: the last user message's text (chat), or the prompt (completions)."""
    if kind == "completion":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            return prompt[0]
        return prompt if isinstance(prompt, str) else ""
    last: Any = None
    for message in body.get("messages") or ():
        if isinstance(message, dict) and message.get("role") == "user":
            last = message.get("content")
    return _content(last)


def normalised(text: str) -> str:
    """Stripped, whitespace collapsed, lower-cased: what the exact judge compares."""
    return " ".join(text.split()).lower()


class Watch:
    """What a sampled call leaves for its job: its request, and its JSON body or its stream's events
    (bounded)."""

    __slots__ = ("body", "events", "overflow", "request", "size")

    def __init__(self, request: dict[str, Any]) -> None:
        self.request = request  # as parsed (and as sent to the worker)
        self.body: bytes | None = None
        self.events: list[bytes] = []
        self.size = 0
        self.overflow = False

    def feed(self, events: bytes) -> None:
        """Whole SSE events, as the relay forwards them: an append, parsed only by the job."""
        if self.overflow:
            return
        self.size += len(events)
        if self.size > MAX_TAP_BYTES:
            self.overflow = True
            self.events.clear()
            return
        self.events.append(events)

    def tap(self, other: Callable[[bytes], None] | None) -> Callable[[bytes], None]:
        """The relay's tap: this watch's, after `other` (the response cache's) when there is one."""
        if other is None:
            return self.feed
        feed = self.feed

        def both(events: bytes) -> None:
            other(events)
            feed(events)

        return both

    def answer(self, kind: Kind) -> str | None:
        if self.body is not None:
            return body_text(kind, self.body)
        if self.overflow or not self.events:
            return None
        return stream_text(kind, self.events)
