"""gateway/front.py: inference POSTs take the short way in, and answer exactly as through Litestar.

Two gateways in this process on the embedded defaults (simulated workers): one served as `gateway serve`
serves it (the app `create_app` returns), one through Litestar's own entry point alone. Every case gets the
same status, error envelope and headers from both; and the short way is taken for inference POSTs only.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from litestar import Litestar

from tests.inprocess_gateway import InProcessGateway

FAST = {"recorder_flush_interval_s": 0.05, "max_body_bytes": 4096}


class Counting:
    """Litestar's ASGI handler (its routing, middleware and route handlers), counting the calls it gets."""

    def __init__(self, handler: Any) -> None:
        self._handler = handler
        self.paths: list[tuple[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append((scope["method"], scope["path"]))
        await self._handler(scope, receive, send)


def litestar_only(app: Litestar) -> Any:
    """The app without its short way: every call through Litestar's own entry point."""

    async def served(scope: Any, receive: Any, send: Any) -> None:
        await Litestar.__call__(app, scope, receive, send)

    return served


@pytest.fixture(scope="module")
def counted() -> dict[str, Counting]:
    return {}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, counted: dict[str, Counting]) -> Iterator[
        tuple[InProcessGateway, InProcessGateway]]:
    short = InProcessGateway(tmp_path_factory.mktemp("front"), FAST)
    short.app.asgi_handler = counted["app"] = Counting(short.app.asgi_handler)
    short.start()
    bare = InProcessGateway(tmp_path_factory.mktemp("bare"), FAST, serve=litestar_only).start()
    yield short, bare
    short.stop()
    bare.stop()


def chat(text: str = "Hello", **extra: Any) -> dict[str, Any]:
    return {"model": "demo-small", "messages": [{"role": "user", "content": f"{text} {uuid.uuid4().hex[:8]}"}],
            "max_tokens": 4, **extra}


# (method, path, headers beyond the key (None: no key at all), body): each an error or an answer.
CASES: list[tuple[str, str, dict[str, str] | None, Any]] = [
    ("POST", "/v1/chat/completions", None, chat()),  # no key: 401
    ("POST", "/v1/chat/completions", {"authorization": "Bearer sk-gw-not-a-key"}, chat()),  # unknown key: 401
    ("POST", "/v1/chat/completions", {}, b"{not json"),  # 400
    ("POST", "/v1/chat/completions", {}, {"model": "demo-small"}),  # no messages: 400
    ("POST", "/v1/chat/completions", {}, {**chat(), "max_tokens": "many"}),  # wrong type: 400, param
    ("POST", "/v1/chat/completions", {}, {**chat(), "model": "no-such-model"}),  # 404
    ("POST", "/v1/chat/completions", {}, chat("x" * 5000)),  # over max_body_bytes: 413
    ("POST", "/v1/chat/completions", {"x-gateway-cache": "sometimes"}, chat()),  # bad cache header: 400
    ("GET", "/v1/chat/completions", {}, None),  # 405
    ("PUT", "/v1/completions", {}, None),  # 405
    ("POST", "/v1/chat/completions", {"x-request-id": "front-test-1"}, chat()),  # 200, the caller's id back
    ("POST", "/v1/completions", {}, {"model": "demo-small", "prompt": "Say hi", "max_tokens": 3}),  # 200
    ("POST", "/v1/chat/completions", {}, chat(stream=True, stream_options={"include_usage": True})),  # 200 SSE
    ("POST", "/v1/chat/completions/", {}, chat()),  # a trailing slash: Litestar's way, same answer
    ("GET", "/v1/models", {}, None),  # Litestar's
]


def call(gw: InProcessGateway, method: str, path: str, headers: dict[str, str] | None, body: Any) -> httpx.Response:
    sent = {} if headers is None else {**gw.auth, **headers}
    if isinstance(body, bytes):
        return httpx.request(method, gw.base_url + path, content=body,
                             headers={**sent, "content-type": "application/json"})
    return httpx.request(method, gw.base_url + path, json=body, headers=sent)


def shape(r: httpx.Response) -> dict[str, Any]:
    """What must agree: status, the error envelope whole, an answer's kind, the headers that matter."""
    kind = r.headers.get("content-type", "").split(";")[0]
    out: dict[str, Any] = {"status": r.status_code, "content-type": kind}
    for name in ("x-gateway-model", "x-gateway-route", "x-gateway-cache", "retry-after", "allow"):
        out[name] = r.headers.get(name)
    out["x-request-id"] = r.headers.get("x-request-id") if r.headers.get("x-request-id", "").startswith(
        "front-test") else bool(r.headers.get("x-request-id"))
    if r.status_code >= 400:
        out["body"] = r.json()
    elif kind == "application/json":
        out["object"] = r.json().get("object")
    else:
        out["ends"] = r.text.rstrip().endswith("data: [DONE]")
    return out


@pytest.mark.parametrize(("method", "path", "headers", "body"), CASES)
def test_the_short_way_answers_as_litestar_does(pair: tuple[InProcessGateway, InProcessGateway], method: str,
                                               path: str, headers: dict[str, str] | None, body: Any) -> None:
    short, bare = pair
    got, want = shape(call(short, method, path, headers, body)), shape(call(bare, method, path, headers, body))
    assert got == want
    if path != "/v1/models":
        assert got["x-request-id"]  # every inference answer, error or not, carries its request id


def test_only_inference_posts_take_the_short_way(pair: tuple[InProcessGateway, InProcessGateway],
                                                 counted: dict[str, Counting]) -> None:
    short, _ = pair
    app = counted["app"]
    app.paths.clear()
    for method, path, headers, body in CASES:
        call(short, method, path, headers, body)
    assert app.paths == [("GET", "/v1/chat/completions"), ("PUT", "/v1/completions"),
                         ("POST", "/v1/chat/completions/"), ("GET", "/v1/models")]


def test_a_failure_inside_the_handler_is_the_apps_500(pair: tuple[InProcessGateway, InProcessGateway],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected exception before the answer starts: the app's own 500 envelope, with the request id."""
    import gateway.front

    async def broken(*_: Any) -> Any:
        raise RuntimeError("boom")

    short, _ = pair
    monkeypatch.setattr(gateway.front, "forward", broken)
    r = call(short, "POST", "/v1/chat/completions", {"x-request-id": "front-test-500"}, chat())
    assert r.status_code == 500
    assert r.json() == {"error": {"message": "The gateway failed to handle this request.", "type": "server_error",
                                  "param": None, "code": "internal_error"}}
    assert r.headers["x-request-id"] == "front-test-500"
