"""The pooled client that calls the workers, and one open call on a replica (failover: workers/forward.py).

Calls go over aiohttp's connection pool: of the clients bench/upstream_client_bench.py compares, it costs
the least CPU per call, many times less than httpx with its own transport (httpcore polls every idle
pooled connection on each request; docs/performance.md). The gateway sits in front of every token, so the
calls use aiohttp, and so do the health checks (workers/health.py), on a session of their own: one HTTP
library in the serving process (httpx beside it cost resident memory too). aiohttp's
errors are translated here, at the boundary, into the gateway's error tree (`failure_kind`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import aiohttp

from workers.pool import Gate, Replica

# Idle pooled connections are closed after this, before the worker closes them: vLLM's server does at 5 s
# (VLLM_HTTP_TIMEOUT_KEEP_ALIVE; uvicorn's default too), aiohttp's own default is 15 s. A call written on a
# connection the worker is closing fails before any answer, and counts against a healthy replica.
KEEPALIVE_S = 4.0


class WorkerResponse(Protocol):
    """A worker's answer as the gateway reads it. `aclose` must finish even when its caller is cancelled
    (a client that left), or the worker would go on generating for nobody."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def aiter_raw(self) -> AsyncIterator[bytes]: ...

    async def aread(self) -> bytes: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class AiohttpResponse:
    """aiohttp's response under the names the gateway reads."""

    raw: aiohttp.ClientResponse

    @property
    def status_code(self) -> int:
        return self.raw.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self.raw.headers

    def aiter_raw(self) -> AsyncIterator[bytes]:
        return self.raw.content.iter_any()  # whatever has arrived: events are relayed as they come

    async def aread(self) -> bytes:
        return await self.raw.read()

    async def aclose(self) -> None:
        # Never waits, so a cancellation has nothing to interrupt (no anyio shield, and none of its cost).
        if self.raw.content.is_eof():
            self.raw.release()  # read to its end: the connection goes back to the pool
        else:
            self.raw.close()  # not: the connection is closed, so the worker stops generating


@dataclass(eq=False)
class UpstreamCall:
    """One open call on a replica; `aclose` must be called exactly once, whatever happens."""

    replica: Replica
    response: WorkerResponse
    gate: Gate | None = None
    _closed: bool = False

    def broke(self, why: str) -> None:
        """The worker failed after answering (mid-stream): it counts against its circuit breaker."""
        self.replica.last_error = why
        self.replica.breaker.failed(time.monotonic())

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.replica.in_flight -= 1
        if self.gate is not None:
            self.gate.leave()
        await self.response.aclose()  # finishes even when the client's disconnect cancelled us (the protocol)


# What a call to a worker may raise besides the gateway's own errors.
UPSTREAM_ERRORS: tuple[type[Exception], ...] = (aiohttp.ClientError,)


def failure_kind(exc: BaseException) -> Literal["connect", "timeout", "other"]:
    """What went wrong: the worker could not be reached, was too slow, or failed otherwise."""
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return "connect"
    return "timeout" if isinstance(exc, TimeoutError) else "other"


@dataclass(frozen=True)
class Upstream:
    """The pooled clients to the workers: `session` for calls, `checks` for health checks. Apart, so that
    calls holding every connection of the pool (long streams) never hold up a health check, which would
    then time out and take healthy replicas out of service."""

    session: aiohttp.ClientSession
    checks: aiohttp.ClientSession

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> AiohttpResponse:
        return AiohttpResponse(await self.session.post(url, data=body, headers=headers, allow_redirects=False))

    async def get(self, url: str, headers: Mapping[str, str]) -> AiohttpResponse:
        return AiohttpResponse(await self.session.get(url, headers=headers, allow_redirects=False))

    async def aclose(self) -> None:
        await self.session.close()
        await self.checks.close()


def new_upstream(connect_timeout: float, timeout: float, max_connections: int) -> Upstream:
    """Both clients (inside the event loop). `timeout`: the longest wait for the worker's next bytes."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, keepalive_timeout=KEEPALIVE_S),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=timeout),
        auto_decompress=False,  # passthrough: bytes as the worker sent them
        cookie_jar=aiohttp.DummyCookieJar(),  # a worker's cookies are never kept, nor sent on another's call
        trust_env=False,  # callers never choose where we connect: no proxies from the environment
    )
    checks = aiohttp.ClientSession(
        # A replica's /health and /metrics at once.
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=2, keepalive_timeout=KEEPALIVE_S),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )
    return Upstream(session, checks)
