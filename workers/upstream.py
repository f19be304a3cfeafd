"""Calls to a pool's replicas through one pooled httpx client, with failover before the first byte.

httpx's errors are translated here, at the boundary, into the gateway's error tree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio
import httpx

from router.errors import NoHealthyReplica, UpstreamTimeout
from workers.pool import Pool, Replica

log = logging.getLogger("gateway.workers")

RETRY_AFTER_S = "1"


@dataclass(eq=False)
class UpstreamCall:
    """One open call on a replica; `aclose` must be called exactly once, whatever happens."""

    replica: Replica
    response: httpx.Response
    _closed: bool = False

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.replica.in_flight -= 1
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


async def open_call(
    client: httpx.AsyncClient,
    pool: Pool,
    path: str,
    body: bytes,
    request_id: str,
    attempts: int,
) -> UpstreamCall:
    """Send `body` to a replica of `pool` and return once its status and headers have arrived.

    A refused connection or a 5xx before the first byte moves on to another replica, at most
    `attempts` replicas in all; the last 5xx is returned as it is when none succeeds.
    """
    headers = {
        "content-type": "application/json",
        "accept-encoding": "identity",  # passthrough streams must not be compressed
        "x-request-id": request_id,
        **pool.headers,
    }
    tried: list[Replica] = []
    failures: list[str] = []
    while len(tried) < attempts:
        replica = pool.choose(exclude=tried)
        if replica is None:
            break
        tried.append(replica)
        request = client.build_request("POST", replica.url + path, content=body, headers=headers)
        replica.in_flight += 1
        try:
            response = await client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            replica.in_flight -= 1
            replica.healthy = False  # the health checker brings it back
            replica.last_error = f"connect failed: {type(exc).__name__}"
            failures.append(f"{replica.url}: {replica.last_error}")
            log.warning("request %s: replica %s refused, trying another", request_id, replica.url)
            continue
        except httpx.TimeoutException as exc:
            replica.in_flight -= 1
            replica.last_error = "timed out"
            raise UpstreamTimeout(
                f"The worker for model `{pool.model}` did not answer in time.",
            ) from exc
        except httpx.HTTPError as exc:
            replica.in_flight -= 1
            replica.last_error = f"{type(exc).__name__}"
            failures.append(f"{replica.url}: {replica.last_error}")
            log.warning("request %s: replica %s failed before answering", request_id, replica.url)
            continue
        call = UpstreamCall(replica, response)
        if response.status_code >= 500 and len(tried) < attempts and pool.choose(exclude=tried):
            replica.last_error = f"answered {response.status_code}"
            log.warning("request %s: replica %s answered %d, trying another",
                        request_id, replica.url, response.status_code)
            await call.aclose()
            continue
        return call
    detail = "no healthy replica" if not failures else f"{len(failures)} replica(s) failed"
    raise NoHealthyReplica(
        f"No worker can serve model `{pool.model}` right now ({detail}); retry shortly.",
        headers={"retry-after": RETRY_AFTER_S},
    )
