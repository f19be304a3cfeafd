"""Bounds on one request's dimensions, checked before it is routed: pure, over the decoded body.

A call may not ask a worker for more than a replica can hold: `n`, `best_of`, the prompts of a
completions call and the sequences they make together, `max_tokens`, `logprobs`, tools, messages and
the body's nesting are bounded by the policy's `defaults.request_limits` (router/spec.py has the
defaults). Past a bound, or with a value the engine could not read either, the call is answered 400
`invalid_request_error` naming the parameter and the limit, before routing, the cache, the budget
reservation and any worker. The shapes a bound counts (messages, content parts, prompts, tools) are
checked on the way: a message that is not an object is a 400 here too.

Values are read as vLLM's request models read them (router/lax.py: `"5"`, `5.0` and `5` are all 5), so no
call a worker would serve is refused for its spelling, and the bound applies to the value the worker will
use. A value below a field's minimum (`n: 0`, `max_tokens: -1`) is the worker's to refuse, with its own
error: it asks for nothing a bound protects.

The common call (a few messages, none of the rarer fields) costs a handful of dict lookups: the nesting
walk runs only when the body has more brackets than `max_depth` (gateway/inference/openai_request.py counts
them on the raw bytes), and the rarer fields are looked at only when one of them is present.

`prompt_count` is what the budget reservation (gateway/limits/) multiplies by too: one piece, so that
the prompts counted here and the prompts priced there agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from router.classify import Kind
from router.errors import InvalidRequest
from router.lax import Unreadable, invalid_type, lax_bool, lax_int
from router.spec import RequestLimitsSpec
from router.yamlsrc import PathT, Problems, Source, convert

__all__ = [
    "DEFAULT_LIMITS",
    "RequestLimits",
    "check_depth",
    "check_request",
    "compile_limits",
    "depth_within",
    "prompt_count",
    "too_deep",
]

class RequestLimits(RequestLimitsSpec, frozen=True, kw_only=True):
    """The bounds in force: `defaults.request_limits` with `max_tokens` resolved."""

    # What `max_tokens` is bounded by, for the message: the policy's own limit or the catalogue's windows.
    max_tokens_reason: str = "the gateway's limit"


DEFAULT_LIMITS = RequestLimits()  # no catalogue: `max_tokens` is bounded by the worker alone


def compile_limits(src: Source, windows: list[int], problems: Problems) -> RequestLimits | None:
    """`defaults.request_limits` of routing.yaml (already converted once, by the rules: its types are
    right) -> the bounds in force; None when a value is out of range (recorded in `problems`).

    Without `max_tokens`, the largest of the catalogue's context `windows` bounds it: no model could
    hold more output than that, whatever rule routes the call."""
    data = src.data.get("defaults") if isinstance(src.data, dict) else None
    raw = data.get("request_limits") if isinstance(data, dict) else None
    path: PathT = ("defaults", "request_limits")
    spec = convert(src, raw, RequestLimitsSpec, path, problems) if raw is not None else RequestLimitsSpec()
    if spec is None:
        return None
    before = len(problems.items)
    for name in RequestLimitsSpec.__struct_fields__:
        value = getattr(spec, name)
        least = 0 if name in ("max_logprobs", "max_top_logprobs") else 1
        if value is not None and value < least:
            problems.add(src, (*path, name), f"`{name}` must be >= {least}")
    if len(problems.items) != before:
        return None
    fields = msgspec.structs.asdict(spec)
    if spec.max_tokens is None and windows:
        fields["max_tokens"] = max(windows)
        return RequestLimits(**fields, max_tokens_reason="the largest context window of the models")
    return RequestLimits(**fields)


# ------------------------------------------------------------------------------------------------ counting


def _token_ids(prompt: list[Any]) -> bool:
    """Whether a non-empty list `prompt` is one prompt of token ids, as the engine's model reads it: numbers, or
    numbers and strings together (`["1", 2]` is token ids 1 and 2); strings alone, or lists, are prompts."""
    first = type(prompt[0])
    if first is int or first is float or first is bool:
        return True
    if first is not str:
        return False
    numbers = False
    for item in prompt:
        kind = type(item)
        if kind is int or kind is float or kind is bool:
            numbers = True
        elif kind is not str:
            return False
    return numbers


def prompt_count(body: dict[str, Any]) -> int:
    """Prompts in a call: a completions `prompt` list of strings or of token lists has one per item; a
    string, a list of token ids and a chat have one."""
    prompt = body.get("prompt")
    if type(prompt) is list and prompt and not _token_ids(prompt):
        return len(prompt)
    return 1


# ------------------------------------------------------------------------------------------------ checking


def _show(value: int) -> str:
    return f"{value}" if -(10**18) < value < 10**18 else f"a {len(str(abs(value)))}-digit number"


def _above(param: str, shown: str, most: int, why: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': integer above maximum value. Expected a value <= {most} ({why}), "
                          f"but got {shown} instead.", param=param, code="integer_above_max_value")


def _read(body: dict[str, Any], param: str, read: Callable[[Any], Any], replaced: dict[str, Any]) -> Any:
    """`body[param]` as the engine reads it (router/lax.py), written back in `body` when that changed it (the
    client's value kept in `replaced`); None when absent or null; a 400 when the engine cannot read it."""
    value = body.get(param)
    if value is None:
        return None
    try:
        result = read(value)
    except Unreadable as exc:
        raise invalid_type(param, exc.expected, value) from None
    if type(result) is not type(value) or result != value:
        replaced[param] = value
        body[param] = result
    return result


def _integer(body: dict[str, Any], param: str, most: int | None, why: str, replaced: dict[str, Any]) -> int | None:
    """`body[param]` as an integer (None when absent), at most `most`. A value below the engine's minimum is
    the engine's to refuse, with its own error."""
    if type(value := body.get(param)) is not int:
        value = _read(body, param, lax_int, replaced)
    if value is not None and most is not None and value > most:
        raise _above(param, _show(value), most, why)
    return value


def _logprobs(body: dict[str, Any], param: str, most: int, replaced: dict[str, Any]) -> None:
    """A count of log probabilities: at most `most`; -1, the engine's "the whole vocabulary", is past any."""
    if _integer(body, param, most, _LIMIT, replaced) == -1:
        raise _above(param, "-1 (the whole vocabulary)", most, _LIMIT)


def _too_long(param: str, length: int, most: int, what: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': array too long. Expected an array with maximum length {most} "
                          f"({what}), but got an array with length {length} instead.",
                          param=param, code="array_above_max_length")


def _messages(messages: list[Any], limits: RequestLimits) -> None:
    if len(messages) > limits.max_messages:
        raise _too_long("messages", len(messages), limits.max_messages, "the gateway's limit")
    for i, message in enumerate(messages):
        if type(message) is not dict:
            raise invalid_type(f"messages[{i}]", "an object", message)
        if type(message.get("role")) is not str:
            if "role" not in message:
                raise InvalidRequest(f"Missing required parameter: 'messages[{i}].role'.",
                                     param=f"messages[{i}].role", code="missing_required_parameter")
            raise invalid_type(f"messages[{i}].role", "a string", message["role"])
        content = message.get("content")
        if content is None or type(content) is str:
            continue
        if type(content) is not list:
            raise invalid_type(f"messages[{i}].content", "a string or an array", content)
        for j, part in enumerate(content):
            if type(part) is not dict and type(part) is not str:
                raise invalid_type(f"messages[{i}].content[{j}]", "an object or a string", part)


def _prompts(prompt: Any, limits: RequestLimits) -> None:
    if type(prompt) is not list or not prompt or _token_ids(prompt):
        return  # a string, or one prompt of token ids (the worker checks the ids)
    if len(prompt) > limits.max_prompts:
        raise _too_long("prompt", len(prompt), limits.max_prompts, "prompts per call, the gateway's limit")
    for i, item in enumerate(prompt):
        if type(item) is not str and type(item) is not list:
            raise invalid_type(f"prompt[{i}]", "a string or an array of token ids", item)


def _tools(body: dict[str, Any], limits: RequestLimits) -> None:
    tools = body.get("tools")
    if tools is not None:
        if type(tools) is not list:
            raise invalid_type("tools", "an array", tools)
        for i, tool in enumerate(tools):
            if type(tool) is not dict:
                raise invalid_type(f"tools[{i}]", "an object", tool)
    for param in ("tools", "functions"):  # `functions`, OpenAI's older name, vLLM ignores: bounded only
        if type(defs := body.get(param)) is list and len(defs) > limits.max_tools:
            raise _too_long(param, len(defs), limits.max_tools, "the gateway's limit")


_LIMIT = "the gateway's limit"
# Fields most calls do not send: looked at only when one of them is there.
_RARER = frozenset(("n", "best_of", "logprobs", "top_logprobs", "prompt_logprobs", "tools", "functions", "seed",
                    "max_completion_tokens"))


def check_request(body: dict[str, Any], kind: Kind, limits: RequestLimits) -> dict[str, Any] | None:
    """Raise InvalidRequest (400, `param` set) for the first dimension of `body` past `limits`, or of a value
    the engine could not read either. The body's nesting is checked apart (check_depth), on the raw bytes' cue.

    The numbers and booleans read here are read as the engine reads them (router/lax.py: `"5"` and `5.0` are
    5) and written back in `body` as such, so that whatever reads the body after (routing, the budget, the
    cache key) reads what the engine will; the client's own values, when that changed any, are returned (the
    worker is sent those: it coerces them itself)."""
    replaced: dict[str, Any] = {}
    if kind == "chat":
        messages = body.get("messages")
        if type(messages) is list:
            _messages(messages, limits)
    else:
        _prompts(body.get("prompt"), limits)
    _integer(body, "max_tokens", limits.max_tokens, limits.max_tokens_reason, replaced)
    if _RARER.isdisjoint(body):
        return replaced or None
    if kind == "chat":
        _integer(body, "max_completion_tokens", limits.max_tokens, limits.max_tokens_reason, replaced)
        _read(body, "logprobs", lax_bool, replaced)
        _logprobs(body, "top_logprobs", limits.max_top_logprobs, replaced)
    else:
        _logprobs(body, "logprobs", limits.max_logprobs, replaced)
    _logprobs(body, "prompt_logprobs", limits.max_top_logprobs, replaced)
    n = max(_integer(body, "n", limits.max_n, _LIMIT, replaced) or 1, 1)
    # vLLM 0.32 ignores `best_of` (earlier versions generated that many): bounded when it reads as a number
    try:
        best_of = max(_integer(body, "best_of", limits.max_best_of, _LIMIT, replaced) or 1, 1)
    except InvalidRequest as exc:
        if exc.code != "invalid_type":
            raise
        best_of = 1
    _integer(body, "seed", None, "", replaced)
    _tools(body, limits)
    prompts = prompt_count(body)
    total = prompts * max(n, best_of)
    if total > limits.max_sequences:
        param = "n" if n >= best_of and n > 1 else "best_of" if best_of > 1 else "prompt"
        raise InvalidRequest(
            f"Invalid '{param}': the call asks for {total} sequences ({prompts} prompt{'s' if prompts != 1 else ''} "
            f"x {max(n, best_of)}); at most {limits.max_sequences} are allowed (the gateway's limit).",
            param=param, code="integer_above_max_value" if param != "prompt" else "array_above_max_length")
    return replaced or None


def depth_within(data: Any, limit: int) -> bool:
    """Whether `data` nests at most `limit` levels (a scalar or an empty container is one). Iterative, level
    by level: any depth is measured without recursion."""
    level = [data] if type(data) is dict or type(data) is list else []
    for _ in range(limit):
        below: list[Any] = []
        for node in level:
            below.extend(node.values() if type(node) is dict else node)
        level = [v for v in below if type(v) is dict or type(v) is list]
        if not level:
            return True
    return not level


def check_depth(data: Any, limit: int) -> None:
    """A 400 when `data` nests deeper than `limit`."""
    if not depth_within(data, limit):
        raise too_deep(limit)


def too_deep(limit: int) -> InvalidRequest:
    return InvalidRequest(f"The request body is nested too deeply: at most {limit} levels of arrays and objects "
                          "are allowed (the gateway's limit).", code="nesting_too_deep")
