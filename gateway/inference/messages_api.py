"""Anthropic's Messages API (`POST /v1/messages`, which vLLM serves) as the gateway reads it: the fields it
acts on, the chat view routing and the limits read (gateway/inference/translated.py), the body for the worker, and
the usage of an answer.

Anthropic counts a prompt in parts: `input_tokens` are those neither read from nor written to the prompt
cache, `cache_read_input_tokens` and `cache_creation_input_tokens` the others (vLLM reports its prefix
cache's hits as `cache_read_input_tokens`). The gateway's usage is the whole prompt, the cached tokens
those read from the cache.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.inference.event_relay import EventDialect
from gateway.inference.openai_request import ParsedRequest, RequestFields
from gateway.inference.sse import EVENT_END
from gateway.inference.translated import (
    Translated,
    check_count,
    check_output,
    check_tools,
    opaque,
    output_capped,
    read_fields,
    text,
    view_fields,
)
from gateway.inference.usage import PromptTokensDetails, Usage
from router.request_limits import RequestLimits


class MessagesFields(RequestFields, kw_only=True):
    """The fields of a Messages call the gateway reads; every other field reaches the worker untouched."""

    messages: list[Any]
    max_tokens: int
    system: str | list[Any] | None = None
    stream: bool | None = False
    temperature: float | None = None
    tools: list[Any] | None = None


def _result(content: Any) -> str | list[dict[str, Any]]:
    """A user's tool result: its text, or its blocks (text, else not bounded here)."""
    if content is None or isinstance(content, str):
        return content or ""
    return [text(item["text"]) if isinstance(item, dict) and item.get("type") == "text"
            and isinstance(item.get("text"), str) else opaque("tool_result")
            for item in (content if isinstance(content, list) else (content,))]


def _content(content: Any, role: str, messages: list[dict[str, Any]]) -> None:
    """One message's content blocks as chat messages (a tool result is a message of its own, as the
    worker makes it)."""
    if isinstance(content, str):
        messages.append({"role": role, "content": content})
        return
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in content if isinstance(content, list) else (content,):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind in ("text", "thinking") and isinstance(value := block.get(kind), str):
            parts.append(text(value))
        elif kind == "redacted_thinking":
            continue  # the worker drops it
        elif kind == "tool_use":
            # The worker writes the input out again as JSON (spaced, ASCII-escaped): longer than the body's bytes.
            calls.append({"type": "function", "function": {"name": block.get("name"), "arguments": ""}})
            if block.get("input"):
                parts.append(opaque("tool_use"))
        elif kind == "tool_result" and role == "user":
            messages.append({"role": "tool", "content": _result(block.get("content"))})
        else:  # an image, a document, an assistant's tool result (written out as Python's repr), ...
            parts.append(opaque(kind if isinstance(kind, str) else "unknown"))
    if parts or calls:
        message: dict[str, Any] = {"role": role, "content": parts}
        if calls:
            message["tool_calls"] = calls
        messages.append(message)


def chat_view(own: MessagesFields, data: dict[str, Any]) -> dict[str, Any]:
    """The call as a chat completion's body, for routing, the limits and the estimates."""
    messages: list[dict[str, Any]] = []
    if own.system:
        _content(own.system, "system", messages)
    for message in own.messages:
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str):
            messages.append({"role": "user", "content": [opaque("unknown")]})
            continue
        _content(message.get("content"), role, messages)
    view: dict[str, Any] = {"messages": messages, "stream": bool(own.stream), "max_tokens": own.max_tokens}
    if own.temperature is not None:
        view["temperature"] = own.temperature
    if own.tools:
        view["tools"] = own.tools
    config = data.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        view["response_format"] = {"type": "json_schema"}
    return view


def parse_messages(body: bytes, limits: RequestLimits) -> ParsedRequest:
    """A Messages call read and checked (400s name the API's own fields)."""
    data, own = read_fields(body, MessagesFields, limits, ("max_tokens",), ("stream",))
    check_count("messages", own.messages, limits.max_messages)
    check_tools(own.tools, limits)
    check_output("max_tokens", own.max_tokens, 1, limits)
    view = chat_view(own, data)
    return Translated(view, view_fields(view, bool(own.stream), own.model), original=data, own=own)


prepare_messages = output_capped("max_tokens")


# --- usage -------------------------------------------------------------------------------------------


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


class _Message(msgspec.Struct):
    usage: _Usage | None = None


class _Event(msgspec.Struct):
    message: _Message | None = None  # message_start
    usage: _Usage | None = None  # message_delta


_decode_message = msgspec.json.Decoder(_Message).decode
_decode_event = msgspec.json.Decoder(_Event).decode


def as_usage(usage: _Usage, before: Usage | None = None) -> Usage:
    """Anthropic's usage as the gateway's; fields it leaves out keep their value in `before` (a stream's
    `message_delta` may carry the output alone)."""
    if usage.input_tokens is None and before is not None:
        prompt, cached = before.prompt_tokens, before.prompt_tokens_details
    else:
        read = usage.cache_read_input_tokens or 0
        prompt = (usage.input_tokens or 0) + read + (usage.cache_creation_input_tokens or 0)
        cached = PromptTokensDetails(read) if usage.cache_read_input_tokens is not None else None
    output = usage.output_tokens if usage.output_tokens is not None else before.completion_tokens if before else 0
    return Usage(prompt, output, prompt + output, cached)


def read_usage(body: bytes) -> Usage | None:
    try:
        message = _decode_message(body)
    except msgspec.DecodeError:
        return None
    return as_usage(message.usage) if message.usage is not None else None


def event_usage(data: bytes, before: Usage | None) -> Usage | None:
    """The usage after a stream's `message_start` (the prompt) or `message_delta` (the output so far)."""
    try:
        event = _decode_event(data)
    except msgspec.DecodeError:
        return before
    usage = event.usage or (event.message.usage if event.message is not None else None)
    return as_usage(usage, before) if usage is not None else before


def _error_event(message: str, type_: str, _code: str, _sequence: int) -> bytes:
    error = {"type": "timeout_error" if type_ == "timeout_error" else "api_error", "message": message}
    return b"event: error\ndata: " + msgspec.json.encode({"type": "error", "error": error}) + EVENT_END


EVENTS = EventDialect(
    usage_events=(b"event: message_start", b"event: message_delta"),
    partial=(b"event: message_start",),
    read_usage=event_usage,
    ends={b"event: message_stop": True},
    content=b"event: content_block_delta",
    error=_error_event,
)
