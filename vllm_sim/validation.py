"""What the simulated vLLM 0.32 rejects, and how: request parsing and vLLM's error envelopes.

Type errors are collected and reported at once, pydantic-style, as vLLM's FastAPI layer does
(``400`` with type ``Bad Request``); the checks vLLM makes after parsing (stream options
without streaming, ``n``/``max_tokens`` bounds, context length) answer one ``BadRequestError``
each; an unknown model is a ``404 NotFoundError``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from vllm_sim.text import render_chat

__all__ = [
    "GenRequest",
    "HTTPError",
    "Prompt",
    "TokenizeRequest",
    "check_fan_out",
    "check_lengths",
    "decode_body",
    "error_body",
    "error_type",
    "parse_gen_request",
    "parse_tokenize_request",
]

_STATUS_TYPES = {
    400: "BadRequestError",
    401: "UnauthorizedError",
    403: "ForbiddenError",
    404: "NotFoundError",
    408: "RequestTimeoutError",
    429: "RateLimitError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


def error_type(status: int) -> str:
    """The ``type`` vLLM writes in the error envelope of ``status``."""
    return _STATUS_TYPES.get(status, "InternalServerError")


def error_body(message: str, type_: str, param: str | None, code: int) -> bytes:
    return msgspec.json.encode({"error": {"message": message, "type": type_, "param": param, "code": code}})


class HTTPError(Exception):
    """An answer other than 200, ready to send."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _bad_request(
    message: str, param: str | None, value: Any = None, *, with_value: bool = True
) -> HTTPError:
    suffix = f" (parameter={param}, value={value})" if with_value else f" (parameter={param})"
    return HTTPError(400, error_body(message + suffix, "BadRequestError", param, 400))


def _check_model(requested: str | None, model: str) -> None:
    if requested is not None and requested != model:
        raise HTTPError(
            404,
            error_body(
                f"The model `{requested}` does not exist. Valid aliases: {model}.", "NotFoundError", "model", 404
            ),
        )


class _Validation:
    """Collects pydantic-style validation errors and renders them as vLLM/FastAPI does."""

    def __init__(self) -> None:
        self.errors: list[dict[str, Any]] = []

    def add(self, type_: str, loc: str, msg: str, value: Any, **extra: Any) -> None:
        self.errors.append({"type": type_, "loc": loc, "msg": msg, "input": value, **extra})

    def error(self) -> HTTPError:
        n = len(self.errors)
        head = f"{n} validation error{'s' if n > 1 else ''}:"
        message = head + "".join(f"\n  {e!r}" for e in self.errors)
        return HTTPError(400, error_body(message, "Bad Request", self.errors[0]["loc"], 400))

    def raise_if_any(self) -> None:
        if self.errors:
            raise self.error()


_TYPE_CHECKS: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "int": (
        lambda v: isinstance(v, int) and not isinstance(v, bool),
        "int_type",
        "Input should be a valid integer",
    ),
    "bool": (lambda v: isinstance(v, bool), "bool_type", "Input should be a valid boolean"),
    "str": (lambda v: isinstance(v, str), "string_type", "Input should be a valid string"),
    "float": (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "float_type",
        "Input should be a valid number",
    ),
    "dict": (lambda v: isinstance(v, dict), "dict_type", "Input should be a valid dictionary"),
    "list": (lambda v: isinstance(v, list), "list_type", "Input should be a valid list"),
}


def _opt(body: dict[str, Any], key: str, kind: str, val: _Validation) -> Any:
    value = body.get(key)
    if value is None:
        return None
    check, type_, msg = _TYPE_CHECKS[kind]
    if not check(value):
        val.add(type_, f"body.{key}", msg, value)
        return None
    return value


_BYTE_RE = re.compile(r"byte (\d+)")


def decode_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body, or raise vLLM's 400 for anything else."""
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        m = _BYTE_RE.search(str(exc))
        val = _Validation()
        val.add(
            "json_invalid", f"body.{m.group(1) if m else 0}", "JSON decode error", {}, ctx={"error": str(exc)}
        )
        raise val.error() from exc
    if not isinstance(body, dict):
        val = _Validation()
        val.add(
            "model_attributes_type",
            "body",
            "Input should be a valid dictionary or object to extract fields from",
            body,
        )
        raise val.error()
    return body


@dataclass(slots=True)
class Prompt:
    key: str  # what the generated text depends on
    tokens: int = 0
    text: str | None = None  # to tokenize (None when ``tokens`` is already known)
    non_text_parts: int = 0
    messages: list[dict[str, Any]] | None = None  # a chat's messages (quality truth and judge read them)


@dataclass(slots=True)
class GenRequest:
    chat: bool
    prompts: list[Prompt]
    stream: bool
    include_usage: bool
    n: int
    max_tokens: int | None
    seed: int | None
    stop: list[str]
    include_stop: bool
    ignore_eos: bool
    min_tokens: int


def parse_gen_request(body: dict[str, Any], chat: bool, model: str) -> GenRequest:
    """A chat (``chat``) or completions request, or raise what vLLM answers to it."""
    val = _Validation()
    req_model = _opt(body, "model", "str", val)
    stream = _opt(body, "stream", "bool", val)
    stream_options = _opt(body, "stream_options", "dict", val)
    include_usage = None
    if stream_options is not None:
        include_usage = stream_options.get("include_usage")
        if include_usage is not None and not isinstance(include_usage, bool):
            val.add(
                "bool_type",
                "body.stream_options.include_usage",
                "Input should be a valid boolean",
                include_usage,
            )
    max_tokens = _opt(body, "max_tokens", "int", val)
    max_completion_tokens = _opt(body, "max_completion_tokens", "int", val) if chat else None
    n = _opt(body, "n", "int", val)
    seed = _opt(body, "seed", "int", val)
    min_tokens = _opt(body, "min_tokens", "int", val)
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        _opt(body, key, "float", val)
    ignore_eos = _opt(body, "ignore_eos", "bool", val)
    include_stop = _opt(body, "include_stop_str_in_output", "bool", val)
    stop = _stop_strings(body.get("stop"), val)

    prompts: list[Prompt] = []
    if chat:
        if "messages" not in body:
            val.add("missing", "body.messages", "Field required", body)
        else:
            prompts = _chat_prompts(body.get("messages"), val)
    else:
        if "prompt" not in body:
            val.add("missing", "body.prompt", "Field required", body)
        else:
            prompts = _completion_prompts(body.get("prompt"), val)
    val.raise_if_any()

    if stream_options is not None and not stream:
        raise _bad_request(
            "Stream options can only be defined when `stream=True`.", "stream_options", with_value=False
        )
    _check_model(req_model, model)
    if n is not None and n < 1:
        raise _bad_request(f"n must be at least 1, got {n}.", "n", n)
    mt = max_completion_tokens if max_completion_tokens is not None else max_tokens
    if mt is not None and mt < 1:
        raise _bad_request(f"max_tokens must be at least 1, got {mt}.", "max_tokens", mt)
    return GenRequest(
        chat=chat,
        prompts=prompts,
        stream=bool(stream),
        include_usage=bool(stream and include_usage),
        n=n or 1,
        max_tokens=mt,
        seed=seed,
        stop=stop,
        include_stop=bool(include_stop),
        ignore_eos=bool(ignore_eos),
        min_tokens=min_tokens or 0,
    )


def _stop_strings(stop_raw: Any, val: _Validation) -> list[str]:
    stop: list[str] = []
    if isinstance(stop_raw, str):
        stop = [stop_raw]
    elif isinstance(stop_raw, list):
        for i, s in enumerate(stop_raw):
            if isinstance(s, str):
                stop.append(s)
            else:
                val.add("string_type", f"body.stop.{i}", "Input should be a valid string", s)
    elif stop_raw is not None:
        val.add("string_type", "body.stop.str", "Input should be a valid string", stop_raw)
    return stop


def _chat_prompts(messages: Any, val: _Validation) -> list[Prompt]:
    if not isinstance(messages, list):
        val.add("list_type", "body.messages", "Input should be a valid list", messages)
        return []
    ok = True
    for i, m in enumerate(messages):
        loc = f"body.messages.{i}"
        if not isinstance(m, dict):
            val.add("dict_type", loc, "Input should be a valid dictionary", m)
            ok = False
            continue
        if not isinstance(m.get("role"), str):
            if "role" in m:
                val.add("string_type", f"{loc}.role", "Input should be a valid string", m["role"])
            else:
                val.add("missing", f"{loc}.role", "Field required", m)
            ok = False
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            val.add("string_type", f"{loc}.content.str", "Input should be a valid string", content)
            ok = False
    if not ok:
        return []
    rendered = render_chat(messages)
    return [Prompt(rendered.text, text=rendered.text, non_text_parts=rendered.non_text_parts, messages=messages)]


def _completion_prompts(prompt: Any, val: _Validation) -> list[Prompt]:
    def is_ids(v: Any) -> bool:
        return (
            isinstance(v, list) and bool(v) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)
        )

    if isinstance(prompt, str):
        return [Prompt(prompt, text=prompt)]
    if is_ids(prompt):
        return [Prompt(",".join(map(str, prompt)), tokens=len(prompt))]
    if isinstance(prompt, list) and prompt:
        out: list[Prompt] = []
        for i, p in enumerate(prompt):
            if isinstance(p, str):
                out.append(Prompt(p, text=p))
            elif is_ids(p):
                out.append(Prompt(",".join(map(str, p)), tokens=len(p)))
            else:
                val.add("string_type", f"body.prompt.{i}", "Input should be a valid string", p)
        return out
    val.add("string_type", "body.prompt.str", "Input should be a valid string", prompt)
    return []


def check_fan_out(req: GenRequest, max_n_sequences: int, max_completion_prompts: int) -> None:
    """vLLM's bounds on how many sequences one request makes: at most ``max_completion_prompts`` prompts
    (``VLLM_MAX_COMPLETION_PROMPTS``), ``n`` at most ``max_n_sequences`` (``VLLM_MAX_N_SEQUENCES``); and, the
    simulator's own, prompts x ``n`` too, since it holds every choice's text until the answer is sent."""
    if len(req.prompts) > max_completion_prompts:
        raise _bad_request(
            f"prompt list length {len(req.prompts)} exceeds the maximum allowed count of {max_completion_prompts}.",
            "prompt",
            with_value=False,
        )
    if req.n > max_n_sequences:
        raise _bad_request(f"n must be at most {max_n_sequences}, got {req.n}.", "n", req.n)
    if req.n * len(req.prompts) > max_n_sequences:
        raise _bad_request(
            f"{len(req.prompts)} prompts x n={req.n} make {req.n * len(req.prompts)} sequences; at most "
            f"{max_n_sequences} are allowed.",
            "n",
            req.n,
        )


def check_lengths(req: GenRequest, max_model_len: int) -> list[int]:
    """Per-prompt max_tokens (prompt tokens counted), or raise vLLM's length errors."""
    limit = max_model_len
    mt = req.max_tokens
    if mt is not None and mt > limit:
        raise _bad_request(
            f"max_tokens={mt} cannot be greater than max_model_len={limit}. Please request fewer output tokens.",
            "max_tokens",
            mt,
        )
    out: list[int] = []
    for p in req.prompts:
        if p.tokens >= limit:
            raise _bad_request(
                f"This model's maximum context length is {limit} tokens. However, your prompt contains "
                f"at least {p.tokens} input tokens, which exceeds this limit even without any output "
                "tokens. Please reduce the length of the input prompt.",
                "input_tokens",
                p.tokens,
            )
        if mt is not None and mt + p.tokens > limit:
            raise _bad_request(
                f"'max_tokens' or 'max_completion_tokens' is too large: {mt}. This model's maximum "
                f"context length is {limit} tokens and your request has {p.tokens} input tokens "
                f"({mt} > {limit} - {p.tokens}).",
                "max_tokens",
                mt,
            )
        out.append(mt if mt is not None else limit - p.tokens)
    return out


@dataclass(slots=True)
class TokenizeRequest:
    text: str
    non_text_parts: int  # chat content parts that are not text (each stands for a fixed number of tokens)
    token_strs: bool


def parse_tokenize_request(body: dict[str, Any], model: str) -> TokenizeRequest:
    """A ``/tokenize`` request (a prompt or chat messages), or raise what vLLM answers to it."""
    val = _Validation()
    req_model = _opt(body, "model", "str", val)
    want_strs = _opt(body, "return_token_strs", "bool", val)
    text, non_text_parts = "", 0
    if "messages" in body:
        messages = body["messages"]
        if not isinstance(messages, list) or not all(_is_message(m) for m in messages):
            val.add("list_type", "body.messages", "Input should be a valid list", messages)
            val.raise_if_any()
        text, non_text_parts = render_chat(messages)
    elif isinstance(body.get("prompt"), str):
        text = body["prompt"]
    elif "prompt" in body:
        val.add("string_type", "body.prompt", "Input should be a valid string", body["prompt"])
    else:
        val.add("missing", "body.prompt", "Field required", body)
    val.raise_if_any()
    _check_model(req_model, model)
    return TokenizeRequest(text, non_text_parts, bool(want_strs))


def _is_message(m: Any) -> bool:
    return isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str | list | None)
