"""The gateway in this test process: `create_app(settings, span_exporter=...)` served by uvicorn in a
background thread, its simulated workers launched by the app's own launch specs. Tests can then look
at what only the process holds: the spans of an in-memory exporter, the live `GatewayContext`."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn

from gateway.app import create_app
from gateway.context import GatewayContext
from gateway.settings import Settings, load_settings
from tests.gateway_process import DEV_KEY
from workers.launcher import free_port

T = TypeVar("T")


class InProcessGateway:
    def __init__(self, workdir: Path, config: dict[str, Any] | None = None, span_exporter: Any = None,
                 dev_key: str = DEV_KEY, serve: Callable[[Any], Any] | None = None) -> None:
        """`serve`: what uvicorn serves, made from the app (by default the app itself, as `gateway serve`)."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        # The request path's database bound is generous unless a test sets it: on a loaded two-core machine a
        # connect can take longer than the default half second, and a test not about the database must not fail.
        base = {"state_dir": str(workdir / "state"), "dev_key": dev_key, "port": self.port, "host": "127.0.0.1",
                "database_request_timeout_s": 5.0}
        self.settings: Settings = load_settings(env={}, overrides={**base, **(config or {})})
        self.key = dev_key
        self.app = create_app(self.settings, span_exporter=span_exporter)
        self.server = uvicorn.Server(uvicorn.Config(
            self.app if serve is None else serve(self.app), host="127.0.0.1", port=self.port, loop="asyncio",
            http="httptools", lifespan="on",
            log_level="warning", access_log=False, timeout_graceful_shutdown=5,
        ))
        self.thread = threading.Thread(target=self.server.run, name=f"gateway:{self.port}", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"}

    @property
    def ctx(self) -> GatewayContext:
        return self.app.state.ctx  # type: ignore[no-any-return]

    def start(self, timeout: float = 60.0) -> InProcessGateway:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while True:
            if not self.thread.is_alive():
                raise RuntimeError("the in-process gateway stopped at start")
            if self.server.started:
                try:
                    if httpx.get(self.base_url + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the in-process gateway did not become ready")
            time.sleep(0.05)
        self.loop = self.server.servers[0].get_loop()
        return self

    def call(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float = 30.0) -> T:
        """Run a coroutine on the gateway's own event loop (its objects live there) and wait for it."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result(timeout)

    def flush(self) -> None:
        """Every finished call's record built (usage metrics, access lines) and settled."""
        async def go() -> None:
            await self.ctx.accounting.recorder.flush()
            if self.ctx.limits is not None:
                await self.ctx.limits.drain()

        self.call(go)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
