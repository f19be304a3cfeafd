"""Calls to a pool's replicas through one pooled client, with failover before the first byte.

Calls go over aiohttp's connection pool. Measured here (bench/upstream_client_bench.py, CPU per call
at 64 concurrent calls to nginx): httpx with its own transport ~0.9 ms (httpcore polls every idle
pooled connection on each request); httpx's API over aiohttp's pool (httpx-aiohttp) ~0.19 ms, or
~0.12 ms straight to its transport; aiohttp itself ~0.07 ms. The gateway sits in front of every
token, so the calls use aiohttp, and so do the health checks (workers/health.py), on a session of their
own: one HTTP library in the serving process (httpx beside it cost ~6 MB of resident memory). aiohttp's
errors are translated here, at the boundary, into the gateway's error tree (`failure_kind`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import aiohttp

from router.errors import NoHealthyReplica, UpstreamTimeout
from workers.pool import Gate, Pool, Replica

log = logging.getLogger("gateway.workers")

RETRY_AFTER_S = "1"
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
        # Never waits, so a cancellation has nothing to interrupt (no shield: ~8 us a call saved).
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


def _failed(replica: Replica, why: str, failures: list[str]) -> None:
    replica.in_flight -= 1
    replica.last_error = why
    replica.breaker.failed(time.monotonic())
    failures.append(f"{replica.url}: {why}")


async def open_call(
    upstream: Upstream,
    pool: Pool,
    path: str,
    body: bytes,
    request_id: str,
    attempts: int,
    prefix: bytes | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> UpstreamCall:
    """Send `body` to a replica of `pool` and return once its status and headers have arrived.
    `extra_headers` go with it (the trace context: `traceparent`, `tracestate`).

    A refused connection or a 5xx before the first byte moves on to another replica, at most
    `attempts` replicas in all; the last 5xx is returned as it is when none succeeds. The pool's
    admission gate is entered first and left when the call is closed.
    """
    if pool.gate is not None:
        await pool.gate.enter()
    try:
        return await _open(upstream, pool, path, body, request_id, attempts, prefix, extra_headers)
    except BaseException:
        if pool.gate is not None:
            pool.gate.leave()
        raise


async def _open(
    upstream: Upstream,
    pool: Pool,
    path: str,
    body: bytes,
    request_id: str,
    attempts: int,
    prefix: bytes | None,
    extra_headers: Mapping[str, str] | None,
) -> UpstreamCall:
    headers = {
        "content-type": "application/json",
        "accept-encoding": "identity",  # passthrough streams must not be compressed
        "x-request-id": request_id,
        **pool.headers,
    }
    if extra_headers:
        headers.update(extra_headers)
    tried: list[Replica] = []
    failures: list[str] = []
    while len(tried) < attempts:
        replica = pool.choose(exclude=tried, prefix=prefix)
        if replica is None:
            break
        tried.append(replica)
        replica.in_flight += 1
        try:
            response = await upstream.send(replica.url + path, body, headers)
        except UPSTREAM_ERRORS as exc:
            kind = failure_kind(exc)
            name = type(exc).__name__
            if kind == "connect":
                _failed(replica, f"connect failed: {name}", failures)
                replica.healthy = False  # the health checker brings it back
                log.warning("request %s: replica %s refused, trying another", request_id, replica.url)
                continue
            if kind == "timeout":
                _failed(replica, "timed out", failures)
                raise UpstreamTimeout(f"The worker for model `{pool.model}` did not answer in time.") from exc
            _failed(replica, name, failures)
            log.warning("request %s: replica %s failed before answering (%s)", request_id, replica.url, name)
            continue
        except BaseException:  # cancelled: the client left before the worker answered
            replica.in_flight -= 1
            replica.breaker.abandoned()
            raise
        call = UpstreamCall(replica, response, pool.gate)
        if response.status_code < 500:
            replica.breaker.succeeded()
            return call
        replica.last_error = f"answered {response.status_code}"
        replica.breaker.failed(time.monotonic())
        if len(tried) < attempts and pool.has_candidate(exclude=tried):
            log.warning("request %s: replica %s answered %d, trying another",
                        request_id, replica.url, response.status_code)
            call.gate = None  # the gate is left once, by open_call's caller
            await call.aclose()
            continue
        return call
    detail = "no healthy replica" if not failures else f"{len(failures)} replica(s) failed"
    raise NoHealthyReplica(
        f"No worker can serve model `{pool.model}` right now ({detail}); retry shortly.",
        headers={"retry-after": RETRY_AFTER_S},
    )
