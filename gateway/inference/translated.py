"""A request in another API's shape than OpenAI's chat (the Responses API, Anthropic's Messages API), as the
gateway reads it: its own fields, checked; and its chat view, the body routing, the limits and the token
estimates read, as they read a chat completion's.

The view is built once per call from the decoded body: the system text and the messages in order, each
content part kept as text (`{"type": "text"}`) or, when it is not text (an image, a file, audio, a tool
input the worker re-encodes, an item the worker holds), as a part of its own type, which no byte count
bounds (gateway/limits/upper_bound.py then prices the prompt at the context window). The view never goes
to a worker: the worker gets the body as the client sent it, with the model routing chose and the
policy's output cap in the API's own field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from gateway.inference.openai_request import ChatFields, ParsedRequest, invalid_fields, names_no_model, read_object
from router.errors import InvalidRequest
from router.lax import Unreadable, invalid_type, lax_bool, lax_int
from router.request_limits import RequestLimits


class Translated(ParsedRequest, kw_only=True):
    """`data` and `fields` are the chat view; `original` the body as the client sent it; `own` its fields."""

    original: dict[str, Any]
    own: Any  # the API's own fields (a msgspec Struct of gateway/inference/responses_api.py or messages_api.py)


T = TypeVar("T")


def read_fields(body: bytes, kind: type[T], limits: RequestLimits, ints: tuple[str, ...] = (),
                bools: tuple[str, ...] = ()) -> tuple[dict[str, Any], T]:
    """The body decoded (400 for bad JSON, too deep) and its fields the gateway reads, checked (400). The
    fields in `ints` and `bools` are read as the worker reads them (router/lax.py: `"5"` is 5); a null or
    empty `model` is absent. The body itself is kept as sent: the worker reads it again."""
    data = read_object(body, limits.max_depth)
    read = dict(data)
    if names_no_model(read):
        del read["model"]
    for names, lax, expected in ((ints, lax_int, "an integer"), (bools, lax_bool, "a boolean")):
        for name in names:
            if (value := read.get(name)) is not None:
                try:
                    read[name] = lax(value)
                except Unreadable:
                    raise invalid_type(name, expected, value) from None
    try:
        return data, msgspec.convert(read, kind)
    except msgspec.ValidationError as exc:
        raise invalid_fields(exc) from exc


def check_count(param: str, items: list[Any] | None, most: int) -> None:
    """At most `most` items in `param` (the policy's request limits), or a 400 naming it."""
    if items is not None and len(items) > most:
        raise InvalidRequest(f"Invalid '{param}': array too long. Expected an array with maximum length {most} "
                             f"(the gateway's limit), but got an array with length {len(items)} instead.",
                             param=param, code="array_above_max_length")


def check_tools(tools: list[Any] | None, limits: RequestLimits) -> None:
    """At most the policy's `max_tools` tools, each an object, or a 400 naming it."""
    check_count("tools", tools, limits.max_tools)
    for i, tool in enumerate(tools or ()):
        if type(tool) is not dict:
            raise invalid_type(f"tools[{i}]", "an object", tool)


def check_output(param: str, value: int | None, least: int, limits: RequestLimits) -> None:
    """An output limit within [least, the policy's max_tokens], or a 400 naming it."""
    if value is None:
        return
    if value < least:
        raise InvalidRequest(f"Invalid '{param}': integer below minimum value. Expected a value >= {least}, but "
                             f"got {value} instead.", param=param, code="integer_below_min_value")
    if limits.max_tokens is not None and value > limits.max_tokens:
        raise InvalidRequest(f"Invalid '{param}': integer above maximum value. Expected a value <= "
                             f"{limits.max_tokens} ({limits.max_tokens_reason}), but got {value} instead.",
                             param=param, code="integer_above_max_value")


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def opaque(kind: str) -> dict[str, Any]:
    """A content part no byte count of the body bounds (its tokens are the worker's to decide)."""
    return {"type": kind}


def view_fields(view: dict[str, Any], stream: bool, model: str) -> ChatFields:
    """The chat fields of a view (what `forward` and the response cache read of a parsed request)."""
    limit = view.get("max_tokens")
    return ChatFields(model=model, stream=stream, max_tokens=limit if isinstance(limit, int) else None,
                      messages=view["messages"])


def body_of(parsed: ParsedRequest) -> dict[str, Any]:
    """The body as the client sent it (what the response cache keys): a translated request's own, not its view."""
    return parsed.original if isinstance(parsed, Translated) else parsed.data


# The body for the worker given the model chosen and a policy's output cap; never a usage chunk to drop.
Prepare = Callable[[ParsedRequest, str, bytes, "int | None"], tuple[bytes, bool]]


def output_capped(field: str, extra: Callable[[Translated, dict[str, Any]], bool] | None = None) -> Prepare:
    """A `prepare` for a translated API: the body as sent, with the routed model and the policy's output cap
    in `field`; `extra` may change more of it (it says whether it did)."""

    def prepare(parsed: ParsedRequest, model: str, original: bytes, cap: int | None) -> tuple[bytes, bool]:
        assert isinstance(parsed, Translated)
        data = parsed.original
        changed = data.get("model") != model
        if cap is not None:
            data[field] = cap
            changed = True
        if extra is not None and extra(parsed, data):
            changed = True
        if not changed:
            return original, False
        data["model"] = model
        return msgspec.json.encode(data), False

    return prepare

