"""ASGI app of the vLLM *simulator*: a fake vLLM 0.32 OpenAI-compatible server.

This is NOT vLLM.  It serves the same HTTP surface with the same JSON shapes (key order,
compact separators, SSE framing) as a real vLLM 0.32 server, but the "model" only draws
deterministic pseudo-English text from a fixed corpus, timed by a simple latency model.
It exists for the gateway's embedded default deployment, for tests and for benchmarks.

It is a plain ASGI 3 callable rather than a Litestar app on purpose: it needs direct control
over ``receive`` (to notice a client disconnect while it is generating), over the exact
response bytes (pre-encoded SSE chunks, vLLM's key order) and over the transport (an
injected "death" must drop the connection mid-body), and it must add as little overhead
per request and per token as possible since it is also a benchmark target.

Endpoints: ``GET /health``, ``GET /version``, ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions``, ``POST /tokenize``, ``GET /metrics``, and the simulator-only
``GET``/``POST /sim/faults`` and ``GET /sim/last-request-headers`` (a debug aid for tests: the
``traceparent``, ``tracestate`` and ``x-request-id`` of the last generation request, nothing else).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import logging
import os
import random
import re
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from vllm_sim.config import Faults, SimConfig
from vllm_sim.judge import verdict
from vllm_sim.text import (
    Generated,
    count_tokens,
    encode,
    encoding,
    generate,
    last_user_text,
    render_chat,
    warm_up,
)
from vllm_sim.truth import OK_MARKER, POOR_MARKER, acceptable

__all__ = [
    "SYSTEM_FINGERPRINT",
    "VLLM_VERSION",
    "SimApp",
    "SimMetrics",
    "SimServer",
    "SimulatedDeath",
    "create_sim_app",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

VLLM_VERSION = "0.32.0"
SYSTEM_FINGERPRINT = "vllm-0.32.0-sim"

_JSON_HEADERS: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json"), (b"vary", b"Origin")]
_SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"vary", b"Origin"),
]
_METRICS_CT = b"text/plain; version=0.0.4; charset=utf-8"
_DONE = b"data: [DONE]\n\n"
_FP_JSON = msgspec.json.encode(SYSTEM_FINGERPRINT)
_OFFLOAD_CHARS = 65536  # tokenize prompts longer than this in a worker thread
_MAX_STEPS_PER_WRITE = 64
_NON_TEXT_TOKEN = 0  # token id standing for non-text chat parts in /tokenize output

_FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
# SIMULATOR DEBUG AID: the only request headers /sim/last-request-headers remembers (never a key).
_REMEMBERED_HEADERS = (b"traceparent", b"tracestate", b"x-request-id")
# fmt: off
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
_TOKEN_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
                  20000.0, 50000.0, 100000.0)
# fmt: on
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


class SimulatedDeath(Exception):
    """Raised out of the ASGI app to make the server drop the connection mid-response.

    uvicorn answers an exception raised after the response started by closing the
    transport, so the client sees a truncated body (no terminating chunk).  The matching
    "Exception in ASGI application" log record is filtered out of ``uvicorn.error``.
    """


class _DeathLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, SimulatedDeath)


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DeathLogFilter) for f in logger.filters):
        logger.addFilter(_DeathLogFilter())


def _error_body(message: str, type_: str, param: str | None, code: int) -> bytes:
    return msgspec.json.encode({"error": {"message": message, "type": type_, "param": param, "code": code}})


class _HTTPError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _bad_request(
    message: str, param: str | None, value: Any = None, *, with_value: bool = True
) -> _HTTPError:
    suffix = f" (parameter={param}, value={value})" if with_value else f" (parameter={param})"
    return _HTTPError(400, _error_body(message + suffix, "BadRequestError", param, 400))


class _Validation:
    """Collects pydantic-style validation errors and renders them as vLLM/FastAPI does."""

    def __init__(self) -> None:
        self.errors: list[dict[str, Any]] = []

    def add(self, type_: str, loc: str, msg: str, value: Any, **extra: Any) -> None:
        self.errors.append({"type": type_, "loc": loc, "msg": msg, "input": value, **extra})

    def error(self) -> _HTTPError:
        n = len(self.errors)
        head = f"{n} validation error{'s' if n > 1 else ''}:"
        message = head + "".join(f"\n  {e!r}" for e in self.errors)
        return _HTTPError(400, _error_body(message, "Bad Request", self.errors[0]["loc"], 400))

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


def _decode_body(raw: bytes) -> dict[str, Any]:
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
class _Prompt:
    key: str  # what the generated text depends on
    tokens: int = 0
    text: str | None = None  # to tokenize (None when ``tokens`` is already known)
    non_text_parts: int = 0
    messages: list[dict[str, Any]] | None = None  # a chat's messages (quality truth and judge read them)


@dataclass(slots=True)
class _GenRequest:
    chat: bool
    prompts: list[_Prompt]
    stream: bool
    include_usage: bool
    n: int
    max_tokens: int | None
    seed: int | None
    stop: list[str]
    include_stop: bool
    ignore_eos: bool
    min_tokens: int


def _parse_gen_request(body: dict[str, Any], chat: bool, model: str) -> _GenRequest:
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
    stop_raw = body.get("stop")
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

    prompts: list[_Prompt] = []
    if chat:
        messages = body.get("messages")
        if "messages" not in body:
            val.add("missing", "body.messages", "Field required", body)
        elif not isinstance(messages, list):
            val.add("list_type", "body.messages", "Input should be a valid list", messages)
        else:
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
            if ok:
                rendered = render_chat(messages)
                prompts.append(
                    _Prompt(
                        rendered.text,
                        text=rendered.text,
                        non_text_parts=rendered.non_text_parts,
                        messages=messages,
                    )
                )
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
    if req_model is not None and req_model != model:
        raise _HTTPError(
            404,
            _error_body(
                f"The model `{req_model}` does not exist. Valid aliases: {model}.",
                "NotFoundError",
                "model",
                404,
            ),
        )
    if n is not None and n < 1:
        raise _bad_request(f"n must be at least 1, got {n}.", "n", n)
    mt = max_completion_tokens if max_completion_tokens is not None else max_tokens
    if mt is not None and mt < 1:
        raise _bad_request(f"max_tokens must be at least 1, got {mt}.", "max_tokens", mt)
    return _GenRequest(
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


def _completion_prompts(prompt: Any, val: _Validation) -> list[_Prompt]:
    def is_ids(v: Any) -> bool:
        return (
            isinstance(v, list) and bool(v) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)
        )

    if isinstance(prompt, str):
        return [_Prompt(prompt, text=prompt)]
    if is_ids(prompt):
        return [_Prompt(",".join(map(str, prompt)), tokens=len(prompt))]
    if isinstance(prompt, list) and prompt:
        out: list[_Prompt] = []
        for i, p in enumerate(prompt):
            if isinstance(p, str):
                out.append(_Prompt(p, text=p))
            elif is_ids(p):
                out.append(_Prompt(",".join(map(str, p)), tokens=len(p)))
            else:
                val.add("string_type", f"body.prompt.{i}", "Input should be a valid string", p)
        return out
    val.add("string_type", "body.prompt.str", "Input should be a valid string", prompt)
    return []


class _Overloaded(Exception):
    pass


class _Slots:
    """At most ``max_running`` holders; FIFO queue of at most ``max_waiting`` waiters."""

    def __init__(self, max_running: int, max_waiting: int) -> None:
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_enter(self) -> asyncio.Future[None] | None:
        """None: a slot is held now.  A future: queued, the slot is held once it resolves."""
        if self.running < self.max_running and not self._waiters:
            self.running += 1
            return None
        if len(self._waiters) >= self.max_waiting:
            raise _Overloaded
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        return fut

    def abandon(self, fut: asyncio.Future[None]) -> None:
        """The waiter of ``fut`` gives up (cancelled): leave the queue or hand the slot back."""
        if fut.done() and not fut.cancelled():
            self.release()
            return
        fut.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(fut)

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes straight to the oldest waiter
                return
        self.running -= 1


class _Histogram:
    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1


@dataclass(slots=True, eq=False)
class _Live:
    """A request holding a running slot (for ``vllm:kv_cache_usage_perc``)."""

    prompt_tokens: int
    output_tokens: int
    t_first: float
    tok_s: float

    def tokens_at(self, now: float) -> int:
        if now < self.t_first:
            return 0
        if self.tok_s <= 0:
            return self.output_tokens
        return min(self.output_tokens, 1 + int((now - self.t_first) / self.tok_s))


class PrefixCache:
    """Simulated automatic prefix caching: chained hashes of 256-character prompt blocks in an LRU."""

    BLOCK = 256

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity = capacity_blocks
        self._blocks: OrderedDict[bytes, None] = OrderedDict()

    def lookup(self, text: str, tokens: int) -> int:
        """Prompt tokens already cached (in proportion to the cached characters); remembers the prompt."""
        if self.capacity == 0 or not text:
            return 0
        h = hashlib.blake2b(digest_size=16)
        hit, missed = 0, False
        n = len(text) // self.BLOCK
        for i in range(n):
            h.update(text[i * self.BLOCK : (i + 1) * self.BLOCK].encode())
            key = h.digest()
            if key in self._blocks:
                self._blocks.move_to_end(key)
                hit += 0 if missed else 1
            else:
                missed = True
                self._blocks[key] = None
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)
        return tokens * hit * self.BLOCK // len(text)


@dataclass(slots=True)
class SimMetrics:
    """Counters of one simulator (also read directly by in-process tests)."""

    received: int = 0
    cancelled: int = 0
    rejected: int = 0
    prompt_tokens: int = 0
    prefix_queries: int = 0
    prefix_hits: int = 0
    generation_tokens: int = 0
    success: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_FINISH_REASONS, 0))
    injected: dict[str, int] = field(default_factory=lambda: {"error": 0, "stall": 0, "die": 0})
    ttft: _Histogram = field(default_factory=lambda: _Histogram(_TTFT_BUCKETS))
    e2e: _Histogram = field(default_factory=lambda: _Histogram(_LATENCY_BUCKETS))
    queue: _Histogram = field(default_factory=lambda: _Histogram(_LATENCY_BUCKETS))
    req_prompt: _Histogram = field(default_factory=lambda: _Histogram(_TOKEN_BUCKETS))
    req_generation: _Histogram = field(default_factory=lambda: _Histogram(_TOKEN_BUCKETS))


class _Ctl:
    """Shared between a request's work and its disconnect watcher."""

    __slots__ = ("done", "fired")

    def __init__(self) -> None:
        self.done = False  # the response is complete (or being completed): ignore disconnects
        self.fired = False  # the watcher cancelled the work because the client went away


def _fmt(v: float) -> str:
    return repr(float(v))


class SimApp:
    """The simulator's ASGI 3 application (see the module docstring)."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.faults: Faults = config.initial_faults()
        self.metrics = SimMetrics()
        self.prefix_cache = PrefixCache(config.prefix_cache_blocks)
        self.slots = _Slots(config.max_running, config.max_waiting)
        self._live: set[_Live] = set()
        self._rng = random.Random(config.seed)
        self._fixed_created = config.resolved_created()
        self._model_json = msgspec.json.encode(config.model)
        self._labels = f'engine="0",model_name={self._model_json.decode()}'
        self._kv_capacity = config.kv_capacity()
        self._ttft_s = config.ttft_ms / 1000.0
        self._prompt_s = config.prompt_token_us / 1e6
        self._tok_s = config.output_token_ms / 1000.0
        self._routes: dict[
            str, dict[str, Callable[[Scope, Receive, Send, list[tuple[bytes, bytes]]], Awaitable[None]]]
        ] = {
            "/v1/chat/completions": {"POST": self._chat},
            "/v1/completions": {"POST": self._completions},
            "/health": {"GET": self._health},
            "/version": {"GET": self._version},
            "/v1/models": {"GET": self._models},
            "/metrics": {"GET": self._metrics},
            "/tokenize": {"POST": self._tokenize},
            "/sim/faults": {"GET": self._get_faults, "POST": self._post_faults},
            "/sim/last-request-headers": {"GET": self._last_request_headers},
        }
        # SIMULATOR DEBUG AID (tests of trace propagation): whitelisted headers of the last generation request.
        self.last_request_headers: dict[str, str] = {}

    # ------------------------------------------------------------------ ASGI plumbing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            methods = self._routes.get(scope["path"])
            extra: list[tuple[bytes, bytes]] = []
            for name, value in scope["headers"]:
                if name == b"x-request-id":
                    extra.append((b"x-request-id", value))
                    break
            if methods is None:
                await _respond(send, 404, b'{"detail":"Not Found"}', _JSON_HEADERS, extra)
                return
            method = scope["method"]
            handler = methods.get("GET" if method == "HEAD" else method)
            if handler is None:
                allow = [(b"allow", ", ".join(methods).encode())]
                await _respond(send, 405, b'{"detail":"Method Not Allowed"}', _JSON_HEADERS, extra + allow)
                return
            await handler(scope, receive, send, extra)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    warm_up()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    def _created(self) -> int:
        return self._fixed_created if self._fixed_created is not None else int(time.time())

    def _fires(self, rate: float) -> bool:
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        return self._rng.random() < rate

    async def _run_cancellable(self, receive: Receive, work: Callable[[_Ctl], Awaitable[None]]) -> None:
        """Run ``work``; cancel it as soon as the client disconnects (ASGI ``http.disconnect``).

        A disconnect-cancelled request is swallowed here (the client is gone; nothing to
        answer) and counted in ``sim_requests_cancelled_total``.
        """
        task = asyncio.current_task()
        assert task is not None
        ctl = _Ctl()

        async def watch() -> None:
            while True:
                try:
                    message = await receive()
                except Exception:  # a server that fails receive() once the client is gone
                    message = {"type": "http.disconnect"}
                if message["type"] == "http.disconnect":
                    if not ctl.done:
                        ctl.fired = True
                        task.cancel()
                    return

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await work(ctl)
        except asyncio.CancelledError:
            if ctl.fired:
                task.uncancel()
                self.metrics.cancelled += 1
                return
            raise
        finally:
            ctl.done = True
            watcher.cancel()

    # ------------------------------------------------------------------ simple endpoints

    async def _health(
        self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]
    ) -> None:
        await _respond(send, self.faults.health_status, b"", [], extra)

    async def _version(
        self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]
    ) -> None:
        await _respond(send, 200, b'{"version":"%s"}' % VLLM_VERSION.encode(), _JSON_HEADERS, extra)

    async def _models(
        self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]
    ) -> None:
        cfg = self.config
        created = self._created()
        perm = hashlib.blake2b(cfg.model.encode(), digest_size=8).hexdigest()
        body = {
            "object": "list",
            "data": [
                {
                    "id": cfg.model,
                    "object": "model",
                    "created": created,
                    "owned_by": "vllm",
                    "root": cfg.model_root if cfg.model_root is not None else cfg.model,
                    "parent": None,
                    "max_model_len": cfg.max_model_len,
                    "permission": [
                        {
                            "id": f"modelperm-{perm}",
                            "object": "model_permission",
                            "created": created,
                            "allow_create_engine": False,
                            "allow_sampling": True,
                            "allow_logprobs": True,
                            "allow_search_indices": False,
                            "allow_view": True,
                            "allow_fine_tuning": False,
                            "organization": "*",
                            "group": None,
                            "is_blocking": False,
                        }
                    ],
                }
            ],
        }
        await _respond(send, 200, msgspec.json.encode(body), _JSON_HEADERS, extra)

    async def _tokenize(
        self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]
    ) -> None:
        raw = await _read_body(receive)
        try:
            body = _decode_body(raw)
            val = _Validation()
            model = _opt(body, "model", "str", val)
            want_strs = _opt(body, "return_token_strs", "bool", val)
            if "messages" in body:
                messages = body["messages"]
                if not isinstance(messages, list) or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
                ):
                    val.add("list_type", "body.messages", "Input should be a valid list", messages)
                    val.raise_if_any()
                rendered = render_chat(messages)
                tokens = encode(rendered.text)
                tokens += [_NON_TEXT_TOKEN] * (rendered.non_text_parts * self.config.non_text_part_tokens)
            elif isinstance(body.get("prompt"), str):
                tokens = encode(body["prompt"])
            else:
                if "prompt" in body:
                    val.add("string_type", "body.prompt", "Input should be a valid string", body["prompt"])
                else:
                    val.add("missing", "body.prompt", "Field required", body)
                tokens = []
            val.raise_if_any()
            if model is not None and model != self.config.model:
                msg = f"The model `{model}` does not exist. Valid aliases: {self.config.model}."
                raise _HTTPError(404, _error_body(msg, "NotFoundError", "model", 404))
        except _HTTPError as exc:
            await _respond(send, exc.status, exc.body, _JSON_HEADERS, extra)
            return
        strs = None
        if want_strs:
            enc = encoding()
            strs = [enc.decode_single_token_bytes(t).decode("utf-8", "replace") for t in tokens]
        out = {
            "count": len(tokens),
            "max_model_len": self.config.max_model_len,
            "tokens": tokens,
            "token_strs": strs,
        }
        await _respond(send, 200, msgspec.json.encode(out), _JSON_HEADERS, extra)

    async def _get_faults(
        self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]
    ) -> None:
        await _respond(send, 200, msgspec.json.encode(self.faults), _JSON_HEADERS, extra)

    async def _post_faults(
        self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]
    ) -> None:
        raw = await _read_body(receive)
        try:
            update = msgspec.json.decode(raw) if raw.strip() else {}
            if not isinstance(update, dict):
                raise TypeError("expected a JSON object")
            merged = msgspec.structs.asdict(self.faults) | update
            self.faults = msgspec.convert(merged, Faults)
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError, ValueError) as exc:
            await _respond(
                send, 400, _error_body(str(exc), "BadRequestError", None, 400), _JSON_HEADERS, extra
            )
            return
        await _respond(send, 200, msgspec.json.encode(self.faults), _JSON_HEADERS, extra)

    async def _metrics(
        self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]
    ) -> None:
        await _respond(send, 200, self.render_metrics().encode(), [(b"content-type", _METRICS_CT)], extra)

    def kv_cache_usage(self) -> float:
        now = asyncio.get_running_loop().time()
        used = sum(live.prompt_tokens + live.tokens_at(now) for live in self._live)
        return min(1.0, used / self._kv_capacity)

    def render_metrics(self) -> str:
        """Prometheus text exposition: a subset of vLLM 0.32's metrics plus ``sim_*`` counters."""
        m = self.metrics
        lb = self._labels
        mj = self._model_json.decode()
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(f"{name}{{{labels}}} {_fmt(v)}" for labels, v in samples)

        def histogram(name: str, help_: str, h: _Histogram) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} histogram")
            acc = 0
            for bound, c in zip((*h.buckets, None), h.counts, strict=True):
                acc += c
                le = "+Inf" if bound is None else _fmt(bound)
                out.append(f'{name}_bucket{{engine="0",le="{le}",model_name={mj}}} {_fmt(acc)}')
            out.append(f"{name}_count{{{lb}}} {_fmt(h.count)}")
            out.append(f"{name}_sum{{{lb}}} {_fmt(h.sum)}")

        metric(
            "vllm:num_requests_running",
            "gauge",
            "Number of requests in model execution batches.",
            [(lb, self.slots.running)],
        )
        metric(
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests waiting to be processed.",
            [(lb, self.slots.waiting)],
        )
        metric(
            "vllm:kv_cache_usage_perc",
            "gauge",
            "KV-cache usage. 1 means 100 percent usage.",
            [(lb, self.kv_cache_usage())],
        )
        metric(
            "vllm:num_preemptions_total",
            "counter",
            "Cumulative number of preemption from the engine.",
            [(lb, 0)],
        )
        metric(
            "vllm:prompt_tokens_total",
            "counter",
            "Number of prefill tokens processed.",
            [(lb, m.prompt_tokens)],
        )
        metric(
            "vllm:prefix_cache_queries_total",
            "counter",
            "Prefix cache queries, in terms of number of queried tokens.",
            [(lb, m.prefix_queries)],
        )
        metric(
            "vllm:prefix_cache_hits_total",
            "counter",
            "Prefix cache hits, in terms of number of cached tokens.",
            [(lb, m.prefix_hits)],
        )
        metric(
            "vllm:generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            [(lb, m.generation_tokens)],
        )
        metric(
            "vllm:request_success_total",
            "counter",
            "Count of successfully processed requests.",
            [(f'engine="0",finished_reason="{r}",model_name={mj}', v) for r, v in m.success.items()],
        )
        metric(
            "vllm:admission_rejections_total",
            "counter",
            "Number of admission attempts rejected by a queue limit, by reason.",
            [
                (f'model_name={mj},reason="max_num_queued_reqs"', m.rejected),
                (f'model_name={mj},reason="max_num_queued_tokens"', 0),
            ],
        )
        histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", m.req_prompt)
        histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", m.req_generation
        )
        histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", m.ttft)
        histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", m.e2e)
        histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            m.queue,
        )
        cap = self._kv_capacity
        metric(
            "vllm:cache_config_info",
            "gauge",
            "Information of the LLMEngine CacheConfig",
            [
                (
                    f'block_size="16",cache_dtype="auto",enable_prefix_caching="False",engine="0",'
                    f'kv_cache_size_tokens="{cap}",num_gpu_blocks="{max(1, cap // 16)}"',
                    1,
                )
            ],
        )
        metric(
            "sim_requests_received_total",
            "counter",
            "vllm-sim only: generation requests received (chat + completions).",
            [(lb, m.received)],
        )
        metric(
            "sim_requests_cancelled_total",
            "counter",
            "vllm-sim only: requests stopped because the client disconnected.",
            [(lb, m.cancelled)],
        )
        metric(
            "sim_requests_rejected_total",
            "counter",
            "vllm-sim only: requests answered 503 because the waiting queue was full.",
            [(lb, m.rejected)],
        )
        metric(
            "sim_injected_errors_total",
            "counter",
            "vllm-sim only: injected failures by kind (error, stall, die).",
            [(f'engine="0",kind="{k}",model_name={mj}', v) for k, v in m.injected.items()],
        )
        out.append("")
        return "\n".join(out)

    # ------------------------------------------------------------------ generation

    async def _chat(
        self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]
    ) -> None:
        self._remember_headers(scope)
        await self._generate(receive, send, extra, chat=True)

    async def _completions(
        self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]
    ) -> None:
        self._remember_headers(scope)
        await self._generate(receive, send, extra, chat=False)

    def _remember_headers(self, scope: Scope) -> None:
        self.last_request_headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"] if name in _REMEMBERED_HEADERS
        }

    async def _last_request_headers(
        self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]
    ) -> None:
        """SIMULATOR DEBUG AID: GET /sim/last-request-headers -> {"traceparent": ..., "x-request-id": ...}."""
        await _respond(send, 200, msgspec.json.encode(self.last_request_headers), _JSON_HEADERS, extra)

    async def _generate(
        self, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]], *, chat: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        arrival = loop.time()
        self.metrics.received += 1
        cfg = self.config
        header_rid = extra[0][1] if extra else None
        if header_rid is None:
            extra = [(b"x-request-id", os.urandom(16).hex().encode())]
        raw = await _read_body(receive)
        try:
            req = _parse_gen_request(_decode_body(raw), chat, cfg.model)
            await self._count_prompt_tokens(req)
            max_tokens = self._check_lengths(req)
        except _HTTPError as exc:
            await _respond(send, exc.status, exc.body, _JSON_HEADERS, extra)
            return

        faults = self.faults
        if self._fires(faults.error_rate):
            self.metrics.injected["error"] += 1
            status = faults.status
            type_ = _STATUS_TYPES.get(status, "InternalServerError")
            msg = f"Simulated failure injected by vllm-sim (error_rate={faults.error_rate})."
            await _respond(send, status, _error_body(msg, type_, None, status), _JSON_HEADERS, extra)
            return
        stall_s = faults.stall_ms / 1000.0 if self._fires(faults.stall_rate) else 0.0
        die_after = faults.die_after_tokens if self._fires(faults.die_rate) else None

        prefix = b"chatcmpl-" if chat else b"cmpl-"
        if header_rid is not None:
            rid = prefix + hashlib.blake2b(prefix + header_rid, digest_size=8).hexdigest().encode()
        else:
            rid = prefix + os.urandom(8).hex().encode()
        seed = req.seed if req.seed is not None else cfg.seed
        gens: list[Generated] = []
        for prompt, mt in zip(req.prompts, max_tokens, strict=True):
            lead, lead_ends = self._lead(prompt)
            for j in range(req.n):
                gens.append(
                    generate(
                        prompt.key,
                        seed=seed,
                        choice=j,
                        max_tokens=mt,
                        mean_output_tokens=cfg.mean_output_tokens,
                        min_tokens=req.min_tokens,
                        ignore_eos=req.ignore_eos,
                        stop=req.stop,
                        include_stop_str_in_output=req.include_stop,
                        lead=lead,
                        lead_ends=lead_ends,
                    )
                )
        prompt_tokens = sum(p.tokens for p in req.prompts)
        cached = sum(self.prefix_cache.lookup(p.text or p.key, p.tokens) for p in req.prompts)
        self.metrics.prefix_queries += prompt_tokens
        self.metrics.prefix_hits += cached

        async def work(ctl: _Ctl) -> None:
            await self._serve(send, ctl, extra, req, rid, gens, prompt_tokens, cached, arrival, stall_s, die_after)

        await self._run_cancellable(receive, work)

    def _lead(self, prompt: _Prompt) -> tuple[str, bool]:
        """What an answer starts with: a judge's whole verdict (True), a quality marker, or nothing."""
        cfg = self.config
        if cfg.ability is None and not cfg.judge:
            return "", False
        user = last_user_text(prompt.messages) if prompt.messages is not None else None
        if cfg.judge and user is not None:
            reply = verdict(user)
            if reply is not None:
                return reply, True
        if cfg.ability is None:
            return "", False
        # a prompt given as token ids is judged on its ids written out ("1,2,3")
        text = user if user is not None else (prompt.text or prompt.key)
        ok = acceptable(text, cfg.model, cfg.ability, cfg.truth_seed, cfg.truth_sharpness)
        return (OK_MARKER if ok else POOR_MARKER), False

    async def _count_prompt_tokens(self, req: _GenRequest) -> None:
        for p in req.prompts:
            if p.text is None:
                continue
            if len(p.text) > _OFFLOAD_CHARS:
                p.tokens = await asyncio.to_thread(count_tokens, p.text)
            else:
                p.tokens = count_tokens(p.text)
            p.tokens += p.non_text_parts * self.config.non_text_part_tokens

    def _check_lengths(self, req: _GenRequest) -> list[int]:
        """Per-prompt max_tokens, or raise vLLM's length errors."""
        limit = self.config.max_model_len
        mt = req.max_tokens
        if mt is not None and mt > limit:
            raise _bad_request(
                f"max_tokens={mt} cannot be greater than max_model_len={limit}. "
                "Please request fewer output tokens.",
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

    async def _serve(
        self,
        send: Send,
        ctl: _Ctl,
        extra: list[tuple[bytes, bytes]],
        req: _GenRequest,
        rid: bytes,
        gens: list[Generated],
        prompt_tokens: int,
        cached_tokens: int,  # of which found in the prefix cache: no prefill time
        arrival: float,
        stall_s: float,
        die_after: int | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        m = self.metrics
        slots = self.slots
        if stall_s > 0:
            m.injected["stall"] += 1
            await asyncio.sleep(stall_s)
        try:
            fut = slots.try_enter()
        except _Overloaded:
            m.rejected += 1
            ctl.done = True
            msg = (
                f"The server is overloaded: the waiting queue is full (max_num_queued_reqs="
                f"{slots.max_waiting}). Please retry later."
            )
            await _respond(
                send, 503, _error_body(msg, "ServiceUnavailableError", None, 503), _JSON_HEADERS, extra
            )
            return
        held = fut is None
        live: _Live | None = None
        steps = max(len(g.texts) for g in gens)
        completion_tokens = sum(len(g.texts) for g in gens)
        sent_steps = 0
        try:
            if req.stream:
                await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS + extra})
            if fut is not None:
                try:
                    await fut
                except asyncio.CancelledError:
                    slots.abandon(fut)
                    raise
                held = True
            admitted = loop.time()
            m.queue.observe(admitted - arrival)
            tok_s = self._tok_s
            t_first = admitted + self._ttft_s + self._prompt_s * (prompt_tokens - cached_tokens)
            live = _Live(prompt_tokens, completion_tokens, t_first, tok_s)
            self._live.add(live)
            die_at = None if die_after is None else min(die_after, steps - 1)
            created = self._created()
            if req.stream:
                sse = _SSEEncoder(req.chat, rid, created, self._model_json, req.include_usage)
                s = 0
                end = steps if die_at is None else die_at
                first = True
                while s < end or first:
                    target = t_first + s * tok_s
                    delay = target - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if first:
                        m.ttft.observe(loop.time() - arrival)
                        first = False
                    # max(0, ...): the event loop may wake a little before `target`.
                    upto = s + 1 + max(0, int((loop.time() - target) / tok_s)) if tok_s > 0 else end
                    upto = min(upto, end, s + _MAX_STEPS_PER_WRITE)
                    parts = sse.steps(gens, s, upto)
                    s = sent_steps = upto
                    if s >= steps:
                        parts.append(sse.tail(gens, prompt_tokens, completion_tokens))
                        ctl.done = True
                        await send(
                            {"type": "http.response.body", "body": b"".join(parts), "more_body": False}
                        )
                        break
                    await send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})
                    if delay <= 0:
                        await asyncio.sleep(0)  # behind schedule: still let others run
                else:
                    # die_at reached (only way out of the loop without completing)
                    self._record_die(live, sent_steps, gens)
                    raise SimulatedDeath(f"vllm-sim: injected death after {sent_steps} tokens")
            else:
                body = self._json_body(req.chat, rid, created, gens, prompt_tokens, completion_tokens)
                finish_at = t_first + (steps - 1 if die_at is None else die_at) * tok_s
                delay = finish_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                m.ttft.observe(t_first - arrival)
                headers = [(b"content-length", str(len(body)).encode()), *_JSON_HEADERS, *extra]
                if die_at is not None:
                    self._record_die(live, die_at, gens)
                    ctl.done = True
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    await send(
                        {"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True}
                    )
                    raise SimulatedDeath(f"vllm-sim: injected death after {die_at} tokens")
                ctl.done = True
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body, "more_body": False})
            # success accounting
            m.prompt_tokens += prompt_tokens
            m.generation_tokens += completion_tokens
            for g in gens:
                m.success[g.finish_reason] += 1
            m.e2e.observe(loop.time() - arrival)
            m.req_prompt.observe(prompt_tokens)
            m.req_generation.observe(completion_tokens)
        except asyncio.CancelledError:
            if live is not None:
                now = loop.time()
                if now >= live.t_first:
                    m.prompt_tokens += prompt_tokens
                emitted = sent_steps if req.stream else min(steps, live.tokens_at(now))
                m.generation_tokens += sum(min(emitted, len(g.texts)) for g in gens)
                m.success["abort"] += 1
            raise
        finally:
            if held:
                slots.release()
            if live is not None:
                self._live.discard(live)

    def _record_die(self, live: _Live, steps_sent: int, gens: list[Generated]) -> None:
        m = self.metrics
        m.injected["die"] += 1
        m.prompt_tokens += live.prompt_tokens
        m.generation_tokens += sum(min(steps_sent, len(g.texts)) for g in gens)

    def _json_body(
        self,
        chat: bool,
        rid: bytes,
        created: int,
        gens: list[Generated],
        prompt_tokens: int,
        completion_tokens: int,
    ) -> bytes:
        usage = {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        }
        model = self.config.model
        if chat:
            return msgspec.json.encode(
                {
                    "id": rid.decode(),
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": i,
                            "message": {
                                "role": "assistant",
                                "content": g.text,
                                "refusal": None,
                                "annotations": None,
                                "audio": None,
                                "function_call": None,
                                "reasoning": None,
                            },
                            "logprobs": None,
                            "finish_reason": g.finish_reason,
                            "stop_reason": g.stop_reason,
                            "token_ids": None,
                            "routed_experts": None,
                        }
                        for i, g in enumerate(gens)
                    ],
                    "service_tier": None,
                    "system_fingerprint": SYSTEM_FINGERPRINT,
                    "usage": usage,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "prompt_text": None,
                    "kv_transfer_params": None,
                    "ec_transfer_params": None,
                    "metrics": None,
                }
            )
        return msgspec.json.encode(
            {
                "id": rid.decode(),
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": i,
                        "text": g.text,
                        "logprobs": None,
                        "finish_reason": g.finish_reason,
                        "stop_reason": g.stop_reason,
                        "token_ids": None,
                        "prompt_logprobs": None,
                        "prompt_token_ids": None,
                        "routed_experts": None,
                    }
                    for i, g in enumerate(gens)
                ],
                "service_tier": None,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "usage": usage,
                "kv_transfer_params": None,
                "ec_transfer_params": None,
                "metrics": None,
            }
        )


class _SSEEncoder:
    """Pre-encoded pieces of one streamed response's ``data: {json}\\n\\n`` events."""

    __slots__ = ("chat", "fp_tail", "head", "mid", "pre")

    def __init__(self, chat: bool, rid: bytes, created: int, model_json: bytes, include_usage: bool) -> None:
        obj = b"chat.completion.chunk" if chat else b"text_completion"
        self.chat = chat
        self.head = b'data: {"id":"%s","object":"%s","created":%d,"model":%s,"choices":[' % (
            rid,
            obj,
            created,
            model_json,
        )
        self.pre: dict[int, bytes] = {}
        if chat:
            self.mid = b'},"logprobs":null,"finish_reason":null,"token_ids":null}]}\n\n'
        else:
            self.mid = b',"logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}]}\n\n'  # noqa: E501
        # with include_usage the fingerprint moves to the usage chunk
        self.fp_tail = b"" if include_usage else b',"system_fingerprint":' + _FP_JSON

    def _pre(self, index: int) -> bytes:
        pre = self.pre.get(index)
        if pre is None:
            if self.chat:
                pre = self.head + b'{"index":%d,"delta":{"content":' % index
            else:
                pre = self.head + b'{"index":%d,"text":' % index
            self.pre[index] = pre
        return pre

    def steps(self, gens: list[Generated], start: int, stop: int) -> list[bytes]:
        parts: list[bytes] = []
        if start == 0 and self.chat:
            for i in range(len(gens)):
                parts.append(
                    self.head + b'{"index":%d,"delta":{"role":"assistant","content":""},"logprobs":null,'
                    b'"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null}\n\n' % i
                )
        mid = self.mid
        if len(gens) == 1:
            jsons = gens[0].jsons
            last = len(jsons) - 1
            pre = self._pre(0)
            for s in range(start, min(stop, last)):
                parts += (pre, jsons[s], mid)
            if start <= last < stop:
                parts.append(self._final(0, gens[0], jsons[last]))
            return parts
        for s in range(start, stop):
            for i, g in enumerate(gens):
                last = len(g.jsons) - 1
                if s < last:
                    parts += (self._pre(i), g.jsons[s], mid)
                elif s == last:
                    parts.append(self._final(i, g, g.jsons[s]))
        return parts

    def _final(self, index: int, g: Generated, token_json: bytes) -> bytes:
        reason = b'"%s"' % g.finish_reason.encode()
        stop_reason = b"null" if g.stop_reason is None else msgspec.json.encode(g.stop_reason)
        if self.chat:
            body = b'},"logprobs":null,"finish_reason":%s,"stop_reason":%s,"token_ids":null}]' % (
                reason,
                stop_reason,
            )
        else:
            body = (
                b',"logprobs":null,"finish_reason":%s,"stop_reason":%s,"prompt_token_ids":null,"token_ids":null}]'
                % (
                    reason,
                    stop_reason,
                )
            )
        return self._pre(index) + token_json + body + self.fp_tail + b"}\n\n"

    def tail(self, gens: list[Generated], prompt_tokens: int, completion_tokens: int) -> bytes:
        if not self.fp_tail:  # include_usage
            usage = (
                b'],"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d},"system_fingerprint":'
                % (
                    prompt_tokens,
                    prompt_tokens + completion_tokens,
                    completion_tokens,
                )
            )
            return self.head + usage + _FP_JSON + b"}\n\n" + _DONE
        return _DONE


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while message.get("more_body", False):
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    extra: list[tuple[bytes, bytes]],
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), *headers, *extra],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def create_sim_app(config: SimConfig) -> SimApp:
    """Build the simulator's ASGI app for ``config`` (loads the tokenizer now)."""
    warm_up()
    _install_log_filter()
    return SimApp(config)


class SimServer:
    """Serve a simulator with uvicorn (uvloop + httptools) in a background daemon thread.

    For tests and for embedding in another process::

        with SimServer(SimConfig(model="m")) as sim:
            httpx.get(sim.url + "/health")
            sim.app.metrics.cancelled  # the live SimApp, inspectable in-process

    ``port=0`` binds a free port; ``url`` tells which.  :meth:`start` returns once uvicorn
    accepts connections.
    """

    def __init__(self, config: SimConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        self.app = create_sim_app(config)
        self.host = host
        self._sock = _bind(host, port)
        self.port: int = self._sock.getsockname()[1]
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> SimServer:
        import uvicorn

        config = uvicorn.Config(
            self.app,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
            proxy_headers=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name=f"vllm-sim:{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("vllm-sim: uvicorn did not start")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
