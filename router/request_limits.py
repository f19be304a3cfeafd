"""Bounds on one request's dimensions, checked before it is routed: pure, over the decoded body.

A call may not ask a worker for more than a replica can hold: `n`, `best_of`, the prompts of a
completions call and the sequences they make together, `max_tokens`, `logprobs`, tools, messages and
the body's nesting are bounded by the policy's `defaults.request_limits` (router/spec.py has the
defaults). Past a bound, or with a value of the wrong type or below its minimum, the call is answered
400 `invalid_request_error` naming the parameter and the limit, before routing, the cache, the budget
reservation and any worker. The shapes a bound counts (messages, content parts, prompts, tools) are
checked on the way: a message that is not an object is a 400 here too.

The common call (a few messages, none of the rarer fields) costs a handful of dict lookups: the nesting
walk runs only when the body has more brackets than `max_depth` (gateway/openai_request.py counts
them on the raw bytes), and the rarer fields are looked at only when one of them is present.

`prompt_count` is what the budget reservation (gateway/limits/) multiplies by too: one piece, so that
the prompts counted here and the prompts priced there agree.
"""

from __future__ import annotations

from typing import Any

import msgspec

from router.classify import Kind
from router.errors import InvalidRequest
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

_INT64 = 2**63


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


def prompt_count(body: dict[str, Any]) -> int:
    """Prompts in a call: a completions `prompt` list of strings or of token lists has one per item; a
    string, a list of token ids and a chat have one."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return len(prompt)
    return 1


# ------------------------------------------------------------------------------------------------ checking


def _show(value: int) -> str:
    return f"{value}" if -(10**18) < value < 10**18 else f"a {len(str(abs(value)))}-digit number"


def _type_error(param: str, expected: str, value: Any) -> InvalidRequest:
    got = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", float: "a number",
           type(None): "null"}.get(type(value), "an integer")
    return InvalidRequest(f"Invalid type for '{param}': expected {expected}, but got {got} instead.",
                          param=param, code="invalid_type")


def _integer(body: dict[str, Any], param: str, least: int, most: int | None, why: str) -> int | None:
    """`body[param]`: None when absent or null; else an integer within [least, most], or a 400."""
    value = body.get(param)
    if value is None:
        return None
    if type(value) is not int:
        raise _type_error(param, "an integer", value)
    if value < least:
        raise InvalidRequest(f"Invalid '{param}': integer below minimum value. Expected a value >= {least}, but "
                             f"got {_show(value)} instead.", param=param, code="integer_below_min_value")
    if most is not None and value > most:
        raise InvalidRequest(f"Invalid '{param}': integer above maximum value. Expected a value <= {most} ({why}), "
                             f"but got {_show(value)} instead.", param=param, code="integer_above_max_value")
    return value


def _too_long(param: str, length: int, most: int, what: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': array too long. Expected an array with maximum length {most} "
                          f"({what}), but got an array with length {length} instead.",
                          param=param, code="array_above_max_length")


def _messages(messages: list[Any], limits: RequestLimits) -> None:
    if len(messages) > limits.max_messages:
        raise _too_long("messages", len(messages), limits.max_messages, "the gateway's limit")
    for i, message in enumerate(messages):
        if type(message) is not dict:
            raise _type_error(f"messages[{i}]", "an object", message)
        if type(message.get("role")) is not str:
            if "role" not in message:
                raise InvalidRequest(f"Missing required parameter: 'messages[{i}].role'.",
                                     param=f"messages[{i}].role", code="missing_required_parameter")
            raise _type_error(f"messages[{i}].role", "a string", message["role"])
        content = message.get("content")
        if content is None or type(content) is str:
            continue
        if type(content) is not list:
            raise _type_error(f"messages[{i}].content", "a string or an array", content)
        for j, part in enumerate(content):
            if type(part) is not dict and type(part) is not str:
                raise _type_error(f"messages[{i}].content[{j}]", "an object or a string", part)


def _prompts(prompt: Any, limits: RequestLimits) -> None:
    if type(prompt) is not list or not prompt or type(prompt[0]) is int:
        return  # a string, or one prompt of token ids (the worker checks the ids)
    if len(prompt) > limits.max_prompts:
        raise _too_long("prompt", len(prompt), limits.max_prompts, "prompts per call, the gateway's limit")
    for i, item in enumerate(prompt):
        if type(item) is not str and type(item) is not list:
            raise _type_error(f"prompt[{i}]", "a string or an array of token ids", item)


def _tools(body: dict[str, Any], param: str, limits: RequestLimits) -> None:
    tools = body.get(param)
    if tools is None:
        return
    if type(tools) is not list:
        raise _type_error(param, "an array", tools)
    if len(tools) > limits.max_tools:
        raise _too_long(param, len(tools), limits.max_tools, "the gateway's limit")
    for i, tool in enumerate(tools):
        if type(tool) is not dict:
            raise _type_error(f"{param}[{i}]", "an object", tool)


_LIMIT = "the gateway's limit"
# Fields most calls do not send: looked at only when one of them is there.
_RARER = frozenset(("n", "best_of", "logprobs", "top_logprobs", "prompt_logprobs", "tools", "functions", "seed",
                    "max_completion_tokens"))


def check_request(body: dict[str, Any], kind: Kind, limits: RequestLimits) -> None:
    """Raise InvalidRequest (400, `param` set) for the first dimension of `body` past `limits`, of the
    wrong type or below its minimum. The body's nesting is checked apart (check_depth), on the raw bytes'
    cue."""
    if kind == "chat":
        messages = body.get("messages")
        if type(messages) is list:
            _messages(messages, limits)
    else:
        _prompts(body.get("prompt"), limits)
    # vLLM answers a completions call with `echo` and `max_tokens: 0` with the prompt alone
    least = 0 if kind == "completion" and body.get("echo") is True else 1
    _integer(body, "max_tokens", least, limits.max_tokens, limits.max_tokens_reason)
    if _RARER.isdisjoint(body):
        return
    if kind == "chat":
        _integer(body, "max_completion_tokens", 1, limits.max_tokens, limits.max_tokens_reason)
        logprobs = body.get("logprobs")
        if logprobs is not None and type(logprobs) is not bool:
            raise _type_error("logprobs", "a boolean", logprobs)
        _integer(body, "top_logprobs", 0, limits.max_top_logprobs, _LIMIT)
    else:
        _integer(body, "logprobs", 0, limits.max_logprobs, _LIMIT)
    _integer(body, "prompt_logprobs", 0, limits.max_top_logprobs, _LIMIT)
    n = _integer(body, "n", 1, limits.max_n, _LIMIT) or 1
    best_of = _integer(body, "best_of", 1, limits.max_best_of, _LIMIT) or 1
    _integer(body, "seed", -_INT64, _INT64 - 1, "a 64-bit integer")
    _tools(body, "tools", limits)
    _tools(body, "functions", limits)
    prompts = prompt_count(body)
    total = prompts * max(n, best_of)
    if total > limits.max_sequences:
        param = "n" if n >= best_of and n > 1 else "best_of" if best_of > 1 else "prompt"
        raise InvalidRequest(
            f"Invalid '{param}': the call asks for {total} sequences ({prompts} prompt{'s' if prompts != 1 else ''} "
            f"x {max(n, best_of)}); at most {limits.max_sequences} are allowed (the gateway's limit).",
            param=param, code="integer_above_max_value" if param != "prompt" else "array_above_max_length")


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
