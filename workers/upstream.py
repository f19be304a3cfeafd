"""Calls to a pool's replicas through one pooled httpx client, with failover before the first byte.

httpx's errors are translated here, at the boundary, into the gateway's error tree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import anyio
import httpx

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


def new_client(connect_timeout: float, timeout: float, max_connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=connect_timeout),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        # Callers never choose where we connect: no redirects, no proxies from the environment.
        follow_redirects=False,
        trust_env=False,
    )


def _failed(replica: Replica, why: str, failures: list[str]) -> None:
    replica.in_flight -= 1
    replica.last_error = why
    replica.breaker.failed(time.monotonic())
    failures.append(f"{replica.url}: {why}")


async def open_call(
    client: httpx.AsyncClient,
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
        return await _open(client, pool, path, body, request_id, attempts, prefix, extra_headers)
    except BaseException:
        if pool.gate is not None:
            pool.gate.leave()
        raise


async def _open(
    client: httpx.AsyncClient,
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
        request = client.build_request("POST", replica.url + path, content=body, headers=headers)
        replica.in_flight += 1
        try:
            response = await client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            _failed(replica, f"connect failed: {type(exc).__name__}", failures)
            replica.healthy = False  # the health checker brings it back
            log.warning("request %s: replica %s refused, trying another", request_id, replica.url)
            continue
        except httpx.TimeoutException as exc:
            _failed(replica, "timed out", failures)
            raise UpstreamTimeout(f"The worker for model `{pool.model}` did not answer in time.") from exc
        except httpx.HTTPError as exc:
            _failed(replica, type(exc).__name__, failures)
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
