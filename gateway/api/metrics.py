"""`GET /metrics` (Prometheus' text format): on the API's port, or on `metrics_port` alone.

Open by default (it holds no secret: counts, model and pool names, replica URLs, tenant and team names);
`metrics_auth: admin` makes it need a key of role admin. With `metrics_port` set, the API's port answers
/metrics with 404 and a second, minimal HTTP server on the same host serves it (same event loop, same
data).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Mapping
from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import State

from gateway.auth.guard import ADMIN, check_role
from gateway.context import GatewayContext
from gateway.errors import envelope
from gateway.telemetry.metrics import CONTENT_TYPE
from router.errors import GatewayError, RouteNotFound

log = logging.getLogger("gateway.telemetry")
MEDIA_TYPE = CONTENT_TYPE.split("; charset", 1)[0]


async def scrape(ctx: GatewayContext, headers: Mapping[str, str]) -> bytes:
    """The exposition, once the caller may see it (raises 401 / 403 when metrics_auth is admin)."""
    if ctx.settings.metrics_auth == "admin":
        if ctx.auth is None:
            raise RouteNotFound("Unknown path: GET /metrics")  # never in a started app
        check_role(await ctx.auth.authenticate(headers), ADMIN)
    metrics = ctx.telemetry.metrics
    await metrics.refresh_budgets(ctx.settings.metrics_budget_refresh_s)
    return metrics.render()


@get("/metrics", media_type=MEDIA_TYPE)
async def metrics_endpoint(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    ctx: GatewayContext = state.ctx
    if ctx.settings.metrics_port is not None:
        raise RouteNotFound(f"Unknown path: GET /metrics (metrics are served on port {ctx.settings.metrics_port})")
    return Response(await scrape(ctx, request.headers), media_type=MEDIA_TYPE)  # Litestar adds the charset


class MetricsApp:
    """The ASGI app of the metrics port: GET /metrics, nothing else."""

    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        status, body, media_type = 200, b"", CONTENT_TYPE
        if scope["path"] != "/metrics":
            status, body, media_type = 404, envelope("Unknown path", "invalid_request_error", None, "not_found"), \
                "application/json"
        elif scope["method"] not in ("GET", "HEAD"):
            status, body, media_type = 405, envelope("Only GET", "invalid_request_error", None,
                                                     "method_not_allowed"), "application/json"
        else:
            try:
                body = await scrape(self.ctx, headers)
            except GatewayError as exc:
                status, body, media_type = exc.status, envelope(exc.message, exc.type, exc.param, exc.code), \
                    "application/json"
            except Exception:
                log.exception("metrics: the scrape failed")
                status, body, media_type = 500, envelope("The scrape failed.", "server_error", None,
                                                         "internal_error"), "application/json"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


class MetricsServer:
    """A second uvicorn server in the gateway's event loop, on its own socket (`metrics_port`)."""

    def __init__(self, ctx: GatewayContext, host: str, port: int) -> None:
        import uvicorn

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Any:  # the main server owns SIGTERM / SIGINT
                yield

        self.sock = socket.create_server((host, port))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(MetricsApp(ctx), lifespan="off", access_log=False, log_config=None,
                                http="h11", loop="none", timeout_graceful_shutdown=1)
        self.server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve(sockets=[self.sock]), name="metrics-server")
        while not self.server.started:
            if self._task.done():
                await self._task  # raises what stopped it
                raise RuntimeError("the metrics server stopped at start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)
        self.sock.close()
