"""ASGI app of the vLLM *simulator*: a fake vLLM 0.32 OpenAI-compatible server.

This is NOT vLLM.  It serves the same HTTP surface with the same JSON shapes (key order,
compact separators, SSE framing) as a real vLLM 0.32 server, but the "model" only draws
deterministic pseudo-English text from a fixed corpus, timed by a simple latency model.
It exists for the gateway's embedded default deployment, for tests and for benchmarks.

It is a plain ASGI 3 callable rather than a web framework's app on purpose: it needs direct
control over ``receive`` (to notice a client disconnect while it is generating), over the exact
response bytes (pre-encoded SSE chunks, vLLM's key order) and over the transport (an
injected "death" must drop the connection mid-body), and it must add as little overhead
per request and per token as possible since it is also a benchmark target.

Endpoints: ``GET /health``, ``GET /version``, ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions``, ``POST /v1/responses`` and ``POST /v1/messages`` (vllm_sim/translated.py),
``POST /tokenize``, ``GET /metrics``, and the simulator-only
``GET``/``POST /sim/faults``, ``GET /sim/last-request-headers`` (a debug aid for tests: the
``traceparent``, ``tracestate`` and ``x-request-id`` of the last generation request, nothing else) and
``POST /sim/wedge`` (a test hook: the process stays alive but answers nothing and ignores SIGTERM).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable

import msgspec

from vllm_sim.asgi import JSON_HEADERS, Receive, Scope, Send, SimulatedDeath, read_body, respond
from vllm_sim.config import Faults, SimConfig
from vllm_sim.generation import handle_generation
from vllm_sim.metrics import render_metrics
from vllm_sim.responses import VLLM_VERSION, models_body, tokenize_body
from vllm_sim.state import SimState
from vllm_sim.text import encode, encoding, warm_up
from vllm_sim.translated import MESSAGES, RESPONSES
from vllm_sim.validation import HTTPError, decode_body, error_body, parse_tokenize_request

__all__ = ["SimApp", "create_sim_app"]

Handler = Callable[[Scope, Receive, Send, list[tuple[bytes, bytes]]], Awaitable[None]]

_METRICS_CT = b"text/plain; version=0.0.4; charset=utf-8"
_NON_TEXT_TOKEN = 0  # token id standing for non-text chat parts in /tokenize output
# SIMULATOR DEBUG AID: the only request headers /sim/last-request-headers remembers (never a key).
_REMEMBERED_HEADERS = (b"traceparent", b"tracestate", b"x-request-id")


class _DeathLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, SimulatedDeath)


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DeathLogFilter) for f in logger.filters):
        logger.addFilter(_DeathLogFilter())


def create_sim_app(config: SimConfig) -> SimApp:
    """Build the simulator's ASGI app for ``config`` (loads the tokenizer now)."""
    warm_up()
    _install_log_filter()
    return SimApp(config)


class SimApp:
    """The simulator's ASGI 3 application (see the module docstring); ``state`` is its engine."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.state = SimState.of(config)
        self._routes: dict[str, dict[str, Handler]] = {
            "/v1/chat/completions": {"POST": self._chat},
            "/v1/completions": {"POST": self._completions},
            "/v1/responses": {"POST": self._responses},
            "/v1/messages": {"POST": self._messages},
            "/health": {"GET": self._health},
            "/version": {"GET": self._version},
            "/v1/models": {"GET": self._models},
            "/metrics": {"GET": self._metrics},
            "/tokenize": {"POST": self._tokenize},
            "/sim/faults": {"GET": self._get_faults, "POST": self._post_faults},
            "/sim/last-request-headers": {"GET": self._last_request_headers},
            "/sim/wedge": {"POST": self._wedge},
        }

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
                await respond(send, 404, b'{"detail":"Not Found"}', JSON_HEADERS, extra)
                return
            method = scope["method"]
            handler = methods.get("GET" if method == "HEAD" else method)
            if handler is None:
                allow = [(b"allow", ", ".join(methods).encode())]
                await respond(send, 405, b'{"detail":"Method Not Allowed"}', JSON_HEADERS, extra + allow)
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

    # ------------------------------------------------------------------ generation

    async def _chat(self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]) -> None:
        self._remember_headers(scope)
        await handle_generation(self.state, receive, send, extra, chat=True)

    async def _completions(
        self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]
    ) -> None:
        self._remember_headers(scope)
        await handle_generation(self.state, receive, send, extra, chat=False)

    async def _responses(self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]) -> None:
        self._remember_headers(scope)
        await handle_generation(self.state, receive, send, extra, chat=True, api=RESPONSES)

    async def _messages(self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]) -> None:
        self._remember_headers(scope)
        await handle_generation(self.state, receive, send, extra, chat=True, api=MESSAGES)

    def _remember_headers(self, scope: Scope) -> None:
        self.state.last_request_headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"] if name in _REMEMBERED_HEADERS
        }

    # ------------------------------------------------------------------ everything else

    async def _health(self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]) -> None:
        await respond(send, self.state.faults.health_status, b"", [], extra)

    async def _version(self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]) -> None:
        await respond(send, 200, b'{"version":"%s"}' % VLLM_VERSION.encode(), JSON_HEADERS, extra)

    async def _models(self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]) -> None:
        await respond(send, 200, models_body(self.config, self.state.created()), JSON_HEADERS, extra)

    async def _tokenize(
        self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]
    ) -> None:
        raw = await read_body(receive)
        try:
            req = parse_tokenize_request(decode_body(raw), self.config.model)
        except HTTPError as exc:
            await respond(send, exc.status, exc.body, JSON_HEADERS, extra)
            return
        tokens = encode(req.text)
        tokens += [_NON_TEXT_TOKEN] * (req.non_text_parts * self.config.non_text_part_tokens)
        strs = None
        if req.token_strs:
            enc = encoding()
            strs = [enc.decode_single_token_bytes(t).decode("utf-8", "replace") for t in tokens]
        await respond(send, 200, tokenize_body(tokens, self.config.max_model_len, strs), JSON_HEADERS, extra)

    async def _get_faults(
        self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]
    ) -> None:
        await respond(send, 200, msgspec.json.encode(self.state.faults), JSON_HEADERS, extra)

    async def _post_faults(
        self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]
    ) -> None:
        raw = await read_body(receive)
        try:
            update = msgspec.json.decode(raw) if raw.strip() else {}
            if not isinstance(update, dict):
                raise TypeError("expected a JSON object")
            merged = msgspec.structs.asdict(self.state.faults) | update
            self.state.faults = msgspec.convert(merged, Faults)
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError, ValueError) as exc:
            await respond(send, 400, error_body(str(exc), "BadRequestError", None, 400), JSON_HEADERS, extra)
            return
        await respond(send, 200, msgspec.json.encode(self.state.faults), JSON_HEADERS, extra)

    async def _metrics(self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]) -> None:
        state = self.state
        text = render_metrics(
            state.metrics,
            self.config.model,
            running=state.slots.running,
            waiting=state.slots.waiting,
            kv_usage=state.kv_cache_usage(),
            kv_capacity=state.kv_capacity,
        )
        await respond(send, 200, text.encode(), [(b"content-type", _METRICS_CT)], extra)

    async def _last_request_headers(
        self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]
    ) -> None:
        """SIMULATOR DEBUG AID: GET /sim/last-request-headers -> {"traceparent": ..., "x-request-id": ...}."""
        await respond(send, 200, msgspec.json.encode(self.state.last_request_headers), JSON_HEADERS, extra)

    async def _wedge(self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]) -> None:
        """SIMULATOR TEST HOOK: POST /sim/wedge -> 200, then the simulator wedges as an engine stuck in a
        runaway request does: the process stays alive, but answers nothing more (not even /health: connections
        wait unanswered) and ignores SIGTERM and SIGINT; only SIGKILL ends it."""
        await respond(send, 200, b'{"wedged":true}', JSON_HEADERS, extra)
        asyncio.get_running_loop().call_soon(_wedge)  # the answer has been written to the socket


def _wedge() -> None:
    if threading.current_thread() is threading.main_thread():  # a simulator in a thread wedges only its thread
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
    while True:
        time.sleep(3600)  # the event loop never runs again
