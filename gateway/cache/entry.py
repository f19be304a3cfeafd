"""What the cache keeps of an answer, and the answers it renders from it.

An entry is the normalized answer: per choice its text (message content or completion text), finish
and stop reasons, and reasoning and tool calls when there are any; the answer's id, creation time,
model, system fingerprint and the worker's usage. From it the cache renders either a JSON body or an
SSE stream in vLLM's framing, so an answer cached from a stream serves a JSON request and the other
way round. A non-streaming answer also keeps the worker's body, which a JSON request gets back as it
was. Answers the normalized form cannot carry faithfully (logprobs, refusals, audio, an error, a
finish reason other than `stop` or `length`) are not cached.

The endpoints that answer with one whole JSON body and never stream (embeddings, score, rerank) keep a
`RawEntry`: the worker's body as it was, and its usage (for the record of a hit).

Entries are msgpack (msgspec); they live only in the cache backend, never in logs or the database.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from gateway.inference.sse import EVENT_END
from gateway.inference.usage import Usage

CACHEABLE_FINISH = frozenset({"stop", "length"})
SSE_BATCH_BYTES = 64 * 1024  # a cacheable stream's events are parsed in batches of about this size


class ToolCall(msgspec.Struct, array_like=True):
    id: str | None
    type: str
    name: str
    arguments: str


class Choice(msgspec.Struct, array_like=True):
    index: int
    text: str | None  # the message content (chat; None when the message has none) or the completion text
    finish_reason: str
    stop_reason: str | int | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCall] | None = None
    # This choice's prompt and completion tokens, when the answer had several choices and the worker said so
    # (usage on every chunk: vLLM's `continuous_usage_stats`); with one choice, the entry's usage says it.
    tokens: tuple[int, int] | None = None


class Entry(msgspec.Struct, array_like=True):
    kind: Literal["chat", "completion"]
    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    body: bytes | None = None  # the worker's JSON body, when the answer was not streamed


class RawEntry(msgspec.Struct, array_like=True):
    """A whole JSON answer, served again as the worker sent it."""

    body: bytes
    usage: Usage
    model: str


# The kinds of call whose answers are kept as an `Entry`; any other kind's answer is a `RawEntry`.
ENTRY_KINDS: dict[str, Literal["chat", "completion"]] = {"chat": "chat", "completion": "completion"}

_entry_encoder = msgspec.msgpack.Encoder()
_entry_decoder = msgspec.msgpack.Decoder(Entry)
_raw_decoder = msgspec.msgpack.Decoder(RawEntry)


def encode_entry(entry: Entry | RawEntry) -> bytes:
    return _entry_encoder.encode(entry)


def decode_entry(data: bytes) -> Entry | None:
    try:
        return _entry_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def decode_raw(data: bytes) -> RawEntry | None:
    try:
        return _raw_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


# --- reading the worker's answers ---------------------------------------------------------------------


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCallPart(msgspec.Struct):
    index: int = 0
    id: str | None = None
    type: str | None = None
    function: _Function | None = None


class _Message(msgspec.Struct):
    """A chat message (a JSON answer) or a delta (a stream chunk). The fields after `tool_calls` are
    ones the normalized form does not carry: an answer with any of them set is not cached."""

    role: str | None = None
    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[_ToolCallPart] | None = None
    reasoning_content: Any = None
    refusal: Any = None
    audio: Any = None
    function_call: Any = None
    annotations: Any = None

    def faithful(self) -> bool:
        return (self.reasoning_content is None and self.refusal is None and self.audio is None
                and self.function_call is None and not self.annotations)


class _Choice(msgspec.Struct):
    index: int = 0
    message: _Message | None = None  # chat, JSON
    delta: _Message | None = None  # chat, stream
    text: str | None = None  # completion
    logprobs: Any = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class _Answer(msgspec.Struct):
    """A JSON answer or one stream chunk."""

    id: str = ""
    created: int = 0
    model: str = ""
    choices: list[_Choice] = []
    usage: Usage | None = None
    system_fingerprint: str | None = None
    error: Any = None


_decode_answer = msgspec.json.Decoder(_Answer).decode


def _finished(choices: list[Choice]) -> bool:
    return bool(choices) and all(c.finish_reason in CACHEABLE_FINISH for c in choices)


def entry_from_body(kind: Literal["chat", "completion"], body: bytes) -> Entry | None:
    """The entry for a whole JSON answer, or None when it may not be cached."""
    try:
        answer = _decode_answer(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if answer.error is not None or answer.usage is None:
        return None
    choices: list[Choice] = []
    for c in answer.choices:
        if c.logprobs is not None or c.finish_reason is None:
            return None
        if kind == "chat":
            m = c.message
            if m is None or not m.faithful():
                return None
            tools = [
                ToolCall(t.id, t.type or "function", (t.function.name if t.function else None) or "",
                         (t.function.arguments if t.function else None) or "")
                for t in m.tool_calls
            ] if m.tool_calls else None
            choices.append(Choice(c.index, m.content, c.finish_reason, c.stop_reason, m.reasoning, tools))
        else:
            choices.append(Choice(c.index, c.text or "", c.finish_reason, c.stop_reason))
    if not _finished(choices):
        return None
    choices.sort(key=lambda c: c.index)
    return Entry(kind, answer.id, answer.created, answer.model, choices, answer.usage, answer.system_fingerprint,
                 body)


class _Building:
    __slots__ = ("finish_reason", "reasoning", "stop_reason", "text", "tokens", "tools")

    def __init__(self) -> None:
        self.text: list[str] | None = None
        self.reasoning: list[str] | None = None
        self.tools: dict[int, list[Any]] = {}  # index -> [id, type, name, [argument parts]]
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.tokens: tuple[int, int] | None = None


class StreamCollector:
    """Collects a cacheable stream as the relay passes its bytes on (`feed`, cheap: an append), parses
    the events in batches, and builds the entry once the stream is over (`entry`). Only ever used for
    requests the cache may store; other streams are never parsed."""

    def __init__(self, kind: Literal["chat", "completion"], max_bytes: int) -> None:
        self.kind = kind
        self.max_bytes = max_bytes  # text beyond this: the answer is too big to cache, stop collecting
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._size = 0
        self._choices: dict[int, _Building] = {}
        self._id = ""
        self._created = 0
        self._model = ""
        self._fingerprint: str | None = None
        self._usage: Usage | None = None
        self.failed = False

    def feed(self, events: bytes) -> None:
        """Whole SSE events, as the relay forwards them."""
        if self.failed:
            return
        self._pending.append(events)
        self._pending_size += len(events)
        if self._pending_size >= SSE_BATCH_BYTES:
            try:
                self._parse()
            except Exception:  # never break the relay: this answer is just not cached
                self._fail()

    def _fail(self) -> None:
        self.failed = True
        self._pending.clear()
        self._choices.clear()

    def _parse(self) -> None:
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        for event in data.split(EVENT_END):
            if not event.startswith(b"data: {"):
                continue  # [DONE], comments, blank
            try:
                chunk = _decode_answer(event[6:])
            except (msgspec.DecodeError, msgspec.ValidationError):
                return self._fail()
            if chunk.error is not None:
                return self._fail()
            if not self._id:
                self._id, self._created, self._model = chunk.id, chunk.created, chunk.model
            if chunk.system_fingerprint is not None:
                self._fingerprint = chunk.system_fingerprint
            if chunk.usage is not None:
                self._usage = chunk.usage
            for c in chunk.choices:
                if c.logprobs is not None:
                    return self._fail()
                b = self._choices.get(c.index)
                if b is None:
                    b = self._choices[c.index] = _Building()
                piece = c.text
                if self.kind == "chat":
                    d = c.delta
                    if d is not None:
                        if not d.faithful():
                            return self._fail()
                        piece = d.content
                        if d.reasoning:
                            b.reasoning = [*(b.reasoning or []), d.reasoning]
                            self._size += len(d.reasoning)
                        for t in d.tool_calls or ():
                            self._tool_part(b, t)
                if piece is not None:
                    if b.text is None:
                        b.text = []
                    if piece:
                        b.text.append(piece)
                        self._size += len(piece)
                if c.finish_reason is not None:
                    b.finish_reason, b.stop_reason = c.finish_reason, c.stop_reason
                if chunk.usage is not None:  # usage on every chunk: this choice's so far
                    b.tokens = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
            if self._size > self.max_bytes:
                return self._fail()
        return None

    def _tool_part(self, b: _Building, t: _ToolCallPart) -> None:
        call = b.tools.get(t.index)
        if call is None:
            call = b.tools[t.index] = [None, "function", "", []]
        if t.id:
            call[0] = t.id
        if t.type:
            call[1] = t.type
        if t.function is not None:
            if t.function.name:
                call[2] += t.function.name
            if t.function.arguments:
                call[3].append(t.function.arguments)
                self._size += len(t.function.arguments)

    def entry(self, usage: Usage | None) -> Entry | None:
        """The entry of the finished stream (`usage`: the relay's reading of it), or None."""
        if not self.failed and self._pending:
            self._parse()
        if self.failed:
            return None
        usage = usage or self._usage
        if usage is None or not self._id:
            return None
        choices = []
        for index in sorted(self._choices):
            b = self._choices[index]
            if b.finish_reason is None:
                return None
            tools = [ToolCall(c[0], c[1], c[2], "".join(c[3])) for _, c in sorted(b.tools.items())] or None
            text = "".join(b.text) if b.text is not None else ("" if self.kind == "completion" else None)
            choices.append(Choice(index, text, b.finish_reason, b.stop_reason,
                                  "".join(b.reasoning) if b.reasoning else None, tools,
                                  b.tokens if len(self._choices) > 1 else None))
        if not _finished(choices):
            return None
        return Entry(self.kind, self._id, self._created, self._model, choices, usage, self._fingerprint)


# --- rendering ----------------------------------------------------------------------------------------

_json = msgspec.json.encode


def _usage_json(usage: Usage) -> dict[str, Any]:
    details = usage.prompt_tokens_details
    return {
        "prompt_tokens": usage.prompt_tokens,
        "total_tokens": usage.total_tokens,
        "completion_tokens": usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": details.cached_tokens} if details is not None else None,
    }


def _tool_calls_json(calls: list[ToolCall], with_index: bool) -> list[dict[str, Any]]:
    out = []
    for i, t in enumerate(calls):
        call: dict[str, Any] = {"id": t.id, "type": t.type, "function": {"name": t.name, "arguments": t.arguments}}
        out.append({"index": i, **call} if with_index else call)
    return out


def render_json(entry: Entry) -> bytes:
    """The answer as a JSON body: the worker's own when it was not streamed, else one in vLLM's shape."""
    if entry.body is not None:
        return entry.body
    choices: list[dict[str, Any]] = []
    for c in entry.choices:
        if entry.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": c.text, "refusal": None, "annotations": None,
                                       "audio": None, "function_call": None}
            if c.tool_calls:
                message["tool_calls"] = _tool_calls_json(c.tool_calls, False)
            message["reasoning"] = c.reasoning
            choices.append({"index": c.index, "message": message, "logprobs": None, "finish_reason": c.finish_reason,
                            "stop_reason": c.stop_reason, "token_ids": None})
        else:
            choices.append({"index": c.index, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason,
                            "stop_reason": c.stop_reason, "token_ids": None})
    return _json({
        "id": entry.id,
        "object": "chat.completion" if entry.kind == "chat" else "text_completion",
        "created": entry.created,
        "model": entry.model,
        "choices": choices,
        "service_tier": None,
        "system_fingerprint": entry.system_fingerprint,
        "usage": _usage_json(entry.usage),
    })


def replayable(entry: Entry, continuous_usage: bool) -> bool:
    """Whether `entry` renders the stream asked: usage on every chunk needs each choice's token counts."""
    return not continuous_usage or len(entry.choices) == 1 or all(c.tokens is not None for c in entry.choices)


def _tool_deltas(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """Tool calls as one stream delta, in vLLM's key order (its first delta of a call, arguments added)."""
    return [{"id": t.id, "type": t.type, "index": i, "function": {"name": t.name, "arguments": t.arguments}}
            for i, t in enumerate(calls)]


def render_sse(entry: Entry, include_usage: bool, continuous_usage: bool = False) -> bytes:
    """The answer as an SSE stream framed as vLLM frames it: for chat a role chunk per choice, then per
    choice its reasoning and tool calls, and its text in the chunk that carries the finish reason; the
    usage chunk only when the client asked for it (then it carries the system fingerprint, else each
    choice's last chunk does, as vLLM does); then `[DONE]`. With `continuous_usage` (and `include_usage`:
    vLLM sends neither without it) every chunk carries its choice's usage so far: none on a role chunk, all
    of it on the others (`replayable` says when the entry knows each choice's)."""
    chat = entry.kind == "chat"
    head = {"id": entry.id, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": entry.created, "model": entry.model}
    events: list[bytes] = []
    continuous = include_usage and continuous_usage

    def event(choice: dict[str, Any], **extra: Any) -> None:
        events.append(b"data: " + _json({**head, "choices": [choice], **extra}) + EVENT_END)

    def so_far(c: Choice, done: bool) -> dict[str, Any]:
        """The chunk's usage (continuous usage stats), as vLLM writes it for the kind of call."""
        if not continuous:
            return {}
        prompt, completion = (entry.usage.prompt_tokens, entry.usage.completion_tokens) if c.tokens is None \
            else c.tokens
        completion = completion if done else 0
        usage = {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion}
        return {"usage": {**usage, "completion_tokens_details": None} if chat else usage}

    last = {} if include_usage or entry.system_fingerprint is None else {"system_fingerprint": entry.system_fingerprint}
    if chat:
        for c in entry.choices:
            event({"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                   "finish_reason": None}, **so_far(c, False), prompt_token_ids=None, prompt_text=None)
        for c in entry.choices:
            if c.reasoning:
                event({"index": c.index, "delta": {"reasoning": c.reasoning}, "logprobs": None,
                       "finish_reason": None, "token_ids": None}, **so_far(c, True))
            if c.tool_calls:
                event({"index": c.index, "delta": {"content": None, "tool_calls": _tool_deltas(c.tool_calls)},
                       "logprobs": None, "finish_reason": None, "token_ids": None}, **so_far(c, True))
            delta = {"content": c.text} if c.text is not None else {}
            event({"index": c.index, "delta": delta, "logprobs": None, "finish_reason": c.finish_reason,
                   "stop_reason": c.stop_reason, "token_ids": None}, **so_far(c, True), **last)
    else:
        for c in entry.choices:
            event({"index": c.index, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason,
                   "stop_reason": c.stop_reason, "prompt_token_ids": None, "token_ids": None},
                  **so_far(c, True), **last)
    if include_usage:  # vLLM writes this one without its null fields
        usage = {k: v for k, v in _usage_json(entry.usage).items() if v is not None}
        fingerprint = {"system_fingerprint": entry.system_fingerprint} if entry.system_fingerprint is not None else {}
        events.append(b"data: " + _json({**head, "choices": [], "usage": usage, **fingerprint}) + EVENT_END)
    events.append(b"data: [DONE]" + EVENT_END)
    return b"".join(events)
