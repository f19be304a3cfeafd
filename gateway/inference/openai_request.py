"""Reading an OpenAI-style request body: only the fields the gateway acts on are checked.

Every other field is kept as the client sent it and reaches the worker untouched. Whatever the bytes,
reading them either gives a body within the policy's request limits (router/request_limits.py) or raises
a 400 `InvalidRequest`: invalid UTF-8, nesting past `max_depth` (before anything recurses into it: the
cache key, classification, the upstream body), a body that is not an object, a field the worker could not
read either. Duplicate keys are read as the workers' own JSON parsers read them: the last one wins.

The fields read are read as vLLM reads them (router/lax.py): `"stream": "yes"` is a stream and
`"max_tokens": "5"` is 5. The body the gateway works with holds the values so read; the worker is sent the
client's own (it coerces them the same way), so that its own checks of the raw values, e.g. vLLM's refusal of
`stream_options` without a truthy `stream`, see what they would see without the gateway.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from router.errors import InvalidRequest
from router.lax import Unreadable, invalid_type, lax_bool
from router.request_limits import DEFAULT_LIMITS, RequestLimits, check_depth, check_request, too_deep


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None  # usage on every chunk (vLLM's), only with include_usage


class RequestFields(msgspec.Struct, kw_only=True):
    """What the gateway reads of any inference body: the model. An endpoint that streams reads `stream` and
    `stream_options` as fields; the others (embeddings, tokenize, score, ...) never stream."""

    model: str = "auto"  # null, as vLLM reads it, is absent

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
    prompt: str | list[Any] | None = None  # vLLM also takes `prompt_embeds` instead, and judges the pair


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
    data: dict[str, Any]  # the body, the fields the gateway reads as the worker reads them
    fields: RequestFields  # ChatFields, CompletionFields or another endpoint's (gateway/inference/endpoints.py)
    raw: dict[str, Any] | None = None  # the client's values of the fields reading changed (None: none did)


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


def _lax_flags(data: dict[str, Any], raw: dict[str, Any]) -> None:
    """`stream` and `stream_options`' flags read as vLLM reads them, written back in `data` (the client's
    values kept in `raw`)."""
    stream = data.get("stream")
    if stream is not None and type(stream) is not bool:
        try:
            data["stream"] = lax_bool(stream)
        except Unreadable:
            raise invalid_type("stream", "a boolean", stream) from None
        raw["stream"] = stream
    options = data.get("stream_options")
    if type(options) is not dict:
        return
    read = None
    for name in ("include_usage", "continuous_usage_stats"):
        value = options.get(name)
        if value is None or type(value) is bool:
            continue
        try:
            flag = lax_bool(value)
        except Unreadable:
            raise invalid_type(f"stream_options.{name}", "a boolean", value) from None
        read = read or dict(options)
        read[name] = flag
    if read is not None:
        raw["stream_options"] = options
        data["stream_options"] = read


def names_no_model(data: dict[str, Any]) -> bool:
    """Whether `data` has a `model` that names none as vLLM reads it (null or empty: its served model; `auto`
    here). The readers drop it from what they check; the worker is sent the routed model anyway."""
    return "model" in data and data["model"] in (None, "")


def parse_body(
    body: bytes, kind: type[ChatFields] | type[CompletionFields], limits: RequestLimits = DEFAULT_LIMITS
) -> ParsedRequest:
    """The body read and checked against `limits` (the policy's `defaults.request_limits`), or a 400."""
    data = read_object(body, limits.max_depth)
    raw = check_request(data, "chat" if kind is ChatFields else "completion", limits) or {}
    if ((stream := data.get("stream")) is not None and type(stream) is not bool) or "stream_options" in data:
        _lax_flags(data, raw)
    if names_no_model(data):
        raw["model"] = data.pop("model")
    try:
        fields = msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise invalid_fields(exc) from exc
    return ParsedRequest(data, fields, raw or None)


def upstream_body(
    parsed: ParsedRequest, model: str, original: bytes, max_tokens: int | None = None
) -> tuple[bytes, bool]:
    """The body for the worker, and whether the client did not ask for the usage chunk.

    The worker is always asked for usage (it is authoritative for accounting); the usage chunk is removed
    again on the way back when the client did not ask for it (gateway/inference/relay.py), and with it the usage on
    every chunk (`continuous_usage_stats`), which vLLM sends only along with the usage chunk. `max_tokens`,
    when given (a policy's cap), replaces the client's. A body that needs none of this goes out as the
    client sent it; one that does is written from the client's values of every field but those.
    """
    fields, data = parsed.fields, parsed.data
    changed = data.get("model") != model
    strip_usage = False
    if fields.stream:
        opts = fields.stream_options
        if opts is None or not opts.include_usage:
            strip_usage = changed = True
            raw = parsed.raw
            sent = raw["stream_options"] if raw and "stream_options" in raw else data.get("stream_options")
            options = {**sent, "include_usage": True} if type(sent) is dict else {"include_usage": True}
            if "continuous_usage_stats" in options:
                options["continuous_usage_stats"] = False
            data["stream_options"] = options
    if max_tokens is not None:
        data["max_tokens"] = max_tokens
        if "max_completion_tokens" in data:
            data["max_completion_tokens"] = max_tokens
        changed = True
    if not changed:
        return original, strip_usage
    data["model"] = model
    out = data
    if parsed.raw:  # the client's own values, but of what is set here
        out = {**data, **parsed.raw, "model": model}
        if strip_usage:
            out["stream_options"] = data["stream_options"]
        if max_tokens is not None:
            out["max_tokens"] = max_tokens
            if "max_completion_tokens" in data:
                out["max_completion_tokens"] = max_tokens
    return msgspec.json.encode(out), strip_usage


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
