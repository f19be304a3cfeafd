"""Calls to a pool's replicas through one pooled client, with failover before the first byte.

The client is httpx's API over aiohttp's connection pool (httpx-aiohttp's transport): httpx's own
transport (httpcore) cost ~0.9 ms of CPU per call here, polling every idle pooled connection on each
request; aiohttp's pool costs ~0.1 ms (bench/results/upstream_client.json). Calls go straight to the
transport (`Upstream.send`): the client's auth, redirect and cookie layers do nothing for us and cost
another ~70 us a call. Transport errors are translated here, at the boundary, into the gateway's
error tree (`failure_kind`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
import anyio
import httpx
from httpx_aiohttp import AiohttpTransport

from router.errors import NoHealthyReplica, UpstreamTimeout
from workers.pool import Gate, Pool, Replica

log = logging.getLogger("gateway.workers")

RETRY_AFTER_S = "1"


@dataclass(eq=False)
class UpstreamCall:
    """One open call on a replica; `aclose` must be called exactly once, whatever happens."""

    replica: Replica
    response: httpx.Response
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
        # Shielded: closing must finish even when the client's disconnect cancelled us, or the
        # worker would go on generating for nobody.
        with anyio.CancelScope(shield=True):
            await self.response.aclose()


# What a call to a worker may raise besides the gateway's own errors: httpx's errors, and aiohttp's
# that httpx-aiohttp does not translate.
UPSTREAM_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError, aiohttp.ClientError)


def failure_kind(exc: BaseException) -> Literal["connect", "timeout", "other"]:
    """What went wrong, from the transport's own exception (httpx-aiohttp's translation blurs it: every
    aiohttp connection error becomes a ConnectTimeout)."""
    cause = exc.__cause__ if isinstance(exc, httpx.HTTPError) and exc.__cause__ is not None else exc
    if isinstance(cause, aiohttp.ClientError | TimeoutError):
        if isinstance(cause, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
            return "connect"
        return "timeout" if isinstance(cause, TimeoutError) else "other"
    if isinstance(cause, httpx.ConnectError | httpx.ConnectTimeout):  # another httpx transport
        return "connect"
    return "timeout" if isinstance(cause, httpx.TimeoutException) else "other"


@dataclass(frozen=True)
class Upstream:
    """The one pooled client to the workers."""

    client: httpx.AsyncClient  # for everything but calls (health checks)
    transport: httpx.AsyncBaseTransport
    timeout: dict[str, float | None]
    # Parsed once: parsing a URL is most of the cost of an httpx.Request. Bounded: replicas x endpoints.
    _urls: dict[str, httpx.URL] = field(default_factory=dict)

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> httpx.Response:
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = self._urls[url] = httpx.URL(url)
        request = httpx.Request("POST", parsed, content=body, headers=headers, extensions={"timeout": self.timeout})
        return await self.transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self.client.aclose()


def new_upstream(connect_timeout: float, timeout: float, max_connections: int) -> Upstream:
    def session() -> aiohttp.ClientSession:  # made on first use, inside the event loop
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0),
            auto_decompress=False,  # passthrough: bytes as the worker sent them
            trust_env=False,
        )

    transport = AiohttpTransport(client=session, trust_env=False)
    limits = httpx.Timeout(timeout, connect=connect_timeout)
    client = httpx.AsyncClient(
        transport=transport,
        timeout=limits,
        # Callers never choose where we connect: no redirects, no proxies from the environment.
        follow_redirects=False,
        trust_env=False,
    )
    return Upstream(client, transport, limits.as_dict())


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
            name = type(exc.__cause__ or exc).__name__
            if kind == "connect":
                _failed(replica, f"connect failed: {name}", failures)
                replica.healthy = False  # the health checker brings it back
                log.warning("request %s: replica %s refused, trying another", request_id, replica.url)
                continue
            if kind == "timeout":
                _failed(replica, "timed out", failures)
                raise UpstreamTimeout(f"The worker for model `{pool.model}` did not answer in time.") from exc
            _failed(replica, name, failures)
            log.warning("request %s: replica %s failed before answering", request_id, replica.url)
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
