"""Reading an OpenAI-style request body: only the fields the gateway acts on are checked.

Every other field is kept as the client sent it and reaches the worker untouched. Whatever the bytes,
reading them either gives a body within the policy's request limits (router/request_limits.py) or raises
a 400 `InvalidRequest`: invalid UTF-8, nesting past `max_depth` (before anything recurses into it: the
cache key, classification, the upstream body), a body that is not an object, a field of the wrong type.
Duplicate keys are read as the workers' own JSON parsers read them: the last one wins.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from router.errors import InvalidRequest
from router.request_limits import DEFAULT_LIMITS, RequestLimits, check_depth, check_request, too_deep


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool | None = None


class RequestFields(msgspec.Struct, kw_only=True):
    """What the gateway reads of any inference body: the model. An endpoint that streams reads `stream` and
    `stream_options` as fields; the others (embeddings, tokenize, score, ...) never stream."""

    model: str = "auto"

    @property
    def stream(self) -> bool | None:
        return False

    @property
    def stream_options(self) -> StreamOptions | None:
        return None


class _Common(RequestFields, kw_only=True):
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None


class ChatFields(_Common, kw_only=True):
    messages: list[Any]


class CompletionFields(_Common, kw_only=True):
    prompt: str | list[Any]


_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_MISSING = re.compile(r"Object missing required field `([^`]+)`")


def invalid_fields(exc: msgspec.ValidationError) -> InvalidRequest:
    """A 400 naming the field msgspec found missing or of the wrong type."""
    text = str(exc)
    if m := _MISSING.search(text):
        param = m.group(1) if not (at := _AT.search(text)) or not at.group(1) else f"{at.group(1)}.{m.group(1)}"
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param,
                              code="missing_required_parameter")
    at = _AT.search(text)
    param = at.group(1) if at else None
    message = _AT.sub("", text)
    return InvalidRequest(f"Invalid type for '{param}': {message}." if param else message,
                          param=param, code="invalid_type")


class ParsedRequest(msgspec.Struct):
    data: dict[str, Any]
    fields: RequestFields  # ChatFields, CompletionFields or another endpoint's (gateway/endpoints.py)


def _brackets_over(body: bytes, limit: int) -> bool:
    """Whether `body` holds more than `limit` opening brackets. A body nests no deeper than that, so the common
    one, with a few, is not walked. `find` (memchr) stops early and is faster than `count` on short bodies."""
    find = body.find
    for bracket in (b"{", b"["):
        at = find(bracket)
        while at >= 0:
            limit -= 1
            if limit < 0:
                return True
            at = find(bracket, at + 1)
    return False


def read_object(body: bytes, max_depth: int = DEFAULT_LIMITS.max_depth) -> dict[str, Any]:
    """A JSON object nesting at most `max_depth` levels, or a 400 (`invalid_json`, `nesting_too_deep`), whatever
    the bytes: every JSON body the gateway reads itself comes through here."""
    if not body:
        raise InvalidRequest("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON ({exc}).", code="invalid_json") from exc
    except UnicodeDecodeError as exc:  # in a string: msgspec decodes them with Python's codec
        raise InvalidRequest("The request body is not valid JSON: a string in it is not valid UTF-8.",
                             code="invalid_json") from exc
    except RecursionError as exc:  # nested deeper than the interpreter's stack: far past any limit
        raise too_deep(max_depth) from exc
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    if _brackets_over(body, max_depth):
        check_depth(data, max_depth)
    return data


def parse_body(
    body: bytes, kind: type[ChatFields] | type[CompletionFields], limits: RequestLimits = DEFAULT_LIMITS
) -> ParsedRequest:
    """The body read and checked against `limits` (the policy's `defaults.request_limits`), or a 400."""
    data = read_object(body, limits.max_depth)
    try:
        fields = msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise invalid_fields(exc) from exc
    check_request(data, "chat" if kind is ChatFields else "completion", limits)
    return ParsedRequest(data, fields)


def upstream_body(
    parsed: ParsedRequest, model: str, original: bytes, max_tokens: int | None = None
) -> tuple[bytes, bool]:
    """The body for the worker, and whether the client did not ask for the usage chunk.

    The worker is always asked for usage (it is authoritative for accounting); the usage chunk
    is removed again on the way back when the client did not ask for it. `max_tokens`, when given
    (a policy's cap), replaces the client's.
    """
    fields, data = parsed.fields, parsed.data
    changed = data.get("model") != model
    strip_usage = False
    if fields.stream:
        opts = fields.stream_options
        if opts is None or not opts.include_usage:
            strip_usage = True
            if not (data.get("stream_options") or {}).get("include_usage"):
                data["stream_options"] = {**(data.get("stream_options") or {}), "include_usage": True}
                changed = True
    if max_tokens is not None:
        data["max_tokens"] = max_tokens
        if "max_completion_tokens" in data:
            data["max_completion_tokens"] = max_tokens
        changed = True
    if not changed:
        return original, strip_usage
    data["model"] = model
    return msgspec.json.encode(data), strip_usage


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return []


def prompt_prefix(data: dict[str, Any], chars: int) -> bytes:
    """The start of the prompt (messages' text in order, or the completion prompt), for prefix affinity."""
    prompt = data.get("prompt")
    if isinstance(prompt, str):
        return prompt[:chars].encode()
    parts: list[str] = []
    size = 0
    messages = data.get("messages")
    for message in messages if isinstance(messages, list) else ():
        for text in _texts(message.get("content") if isinstance(message, dict) else None):
            parts.append(text[: chars - size])
            size += len(parts[-1])
        if size >= chars:
            break
    return "\x1e".join(parts).encode()
