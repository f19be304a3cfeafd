"""Forwarding one request to its targets: for each (model, pool) in turn, the pool's admission gate, a
replica, the call, failover to another replica before the first byte; then the next model when every
replica of the pool failed before answering or answered 5xx.

What differs per target (the body for that model, the prompt prefix for affinity) comes from the caller's
`prepare`; what a tracer wants to see comes out through a `CallObserver`. Nothing here reads a prompt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from router.errors import NoHealthyReplica, UpstreamTimeout
from workers.pool import Pool, Replica
from workers.upstream import UPSTREAM_ERRORS, Upstream, UpstreamCall, failure_kind

log = logging.getLogger("gateway.workers")

RETRY_AFTER_S = "1"

# The body to send to `model` on `pool`, and the prompt prefix for the pool's affinity (or None).
Prepare = Callable[[str, Pool], tuple[bytes, bytes | None]]


class CallObserver(Protocol):
    """Sees each target's call begin and end (the gateway's tracing)."""

    def calling(self, model: str, pool: str) -> Mapping[str, str]:
        """A call to `model` on `pool` begins; the headers it carries (the trace context)."""
        ...

    def failed(self, error: BaseException | int) -> None:
        """The call on this target is over without an answer to relay: the exception, or the 5xx status
        the worker answered before a fallback."""
        ...

    def opened(self, call: UpstreamCall) -> None:
        """The worker answered (status and headers); this call is the one relayed."""
        ...


@dataclass(frozen=True, slots=True)
class Forwarded:
    model: str
    pool: Pool
    call: UpstreamCall


async def forward_call(
    upstream: Upstream,
    targets: Sequence[tuple[str, Pool]],
    path: str,
    prepare: Prepare,
    request_id: str,
    attempts: int,
    headers: Mapping[str, str] | None = None,
    observer: CallObserver | None = None,
    pinned: str | None = None,
) -> Forwarded:
    """The call on the first target that answers, once its status and headers have arrived. `attempts`:
    replicas tried per pool. `headers` go with each call (the caller's trace context) unless `observer`
    gives its own. `pinned`: the URL of the one replica the call may go to (it holds what the call needs).

    A pool that cannot serve (`NoHealthyReplica`) or whose replicas all answered 5xx moves on to the next
    target; the last target's error is raised, or its 5xx returned as it is. Other errors (a timeout, a full
    pool) are raised at once. The gate entered is left once: here on failure, by `call.aclose()` otherwise.
    """
    last = len(targets) - 1
    for i, (model, pool) in enumerate(targets):
        body, prefix = prepare(model, pool)
        if observer is not None:
            headers = observer.calling(model, pool.name)
        gate = pool.gate
        try:
            if gate is not None:
                await gate.enter()
            try:
                call = await _failover(upstream, pool, path, body, request_id, attempts, prefix, headers, pinned)
            except BaseException:
                if gate is not None:
                    gate.leave()
                raise
        except BaseException as exc:
            if observer is not None:
                observer.failed(exc)
            if not isinstance(exc, NoHealthyReplica) or i == last:
                raise
            log.warning("request %s: pool %s cannot serve %s; falling back to %s", request_id, pool.name, model,
                        targets[i + 1][0])
            continue
        if call.response.status_code >= 500 and i < last:
            log.warning("request %s: pool %s answered %d; falling back to %s", request_id, pool.name,
                        call.response.status_code, targets[i + 1][0])
            if observer is not None:
                observer.failed(call.response.status_code)
            await call.aclose()
            continue
        if observer is not None:
            observer.opened(call)
        return Forwarded(model, pool, call)
    raise AssertionError("forwarding needs at least one target")


def _failed(replica: Replica, why: str, failures: list[str]) -> None:
    replica.in_flight -= 1
    replica.last_error = why
    replica.breaker.failed(time.monotonic())
    failures.append(f"{replica.url}: {why}")


async def _failover(
    upstream: Upstream,
    pool: Pool,
    path: str,
    body: bytes,
    request_id: str,
    attempts: int,
    prefix: bytes | None,
    extra_headers: Mapping[str, str] | None,
    pinned: str | None = None,
) -> UpstreamCall:
    """Send `body` to a replica of `pool` (its gate already entered). A refused connection or a 5xx before
    the first byte moves on to another replica, at most `attempts` in all; the last 5xx is returned as it
    is when none succeeds."""
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
        replica = pool.choose(exclude=tried, prefix=prefix, pinned=pinned)
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
        if len(tried) < attempts and pinned is None and pool.has_candidate(exclude=tried):
            log.warning("request %s: replica %s answered %d, trying another",
                        request_id, replica.url, response.status_code)
            call.gate = None  # this target's gate is left once, by the call finally returned or by `forward_call`
            await call.aclose()
            continue
        return call
    detail = "no healthy replica" if not failures else f"{len(failures)} replica(s) failed"
    raise NoHealthyReplica(
        f"No worker can serve model `{pool.model}` right now ({detail}); retry shortly.",
        headers={"retry-after": RETRY_AFTER_S},
    )
