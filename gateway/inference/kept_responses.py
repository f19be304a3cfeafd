"""The responses workers keep (the Responses API): each call's response is pinned to the replica that made it
(gateway/inference/response_pins.py), a call continuing one (`previous_response_id`) goes to that replica, and a
background response (`background: true`) is followed to its end for its usage.

A background response is answered at once (`queued`) and made afterwards, in the worker; its usage is
known only then. So its call stays open after the answer: the gateway asks the replica for the response
(`GET /v1/responses/{id}`) every `responses_poll_s` (doubling, up to ten times that) until it is
completed, incomplete, failed or cancelled, or `responses_follow_max_s` has passed; then the call is
recorded once, with the response's usage, and its budget reservation settled. A background stream is
followed likewise when its client leaves before the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, replace
from urllib.parse import quote

from gateway.inference.response_pins import Pin, ResponsePins
from gateway.inference.responses_api import FINAL_STATUSES, ResponsesFields, read_response, response_id
from gateway.inference.translated import Translated
from gateway.outcome import Outcome, finish
from gateway.routing import Route
from router.catalogue import AUTO
from router.errors import InvalidRequest, ResponseNotFound, ResponsesUnavailable
from workers.pool import Pool, Pools, Replica
from workers.upstream import UPSTREAM_ERRORS, Upstream

log = logging.getLogger("gateway.responses")

MAX_POLL_FACTOR = 10  # the wait between two polls grows to at most this many times the first


def not_found(response: str, param: str | None) -> ResponseNotFound:
    return ResponseNotFound(f"Response with id '{response}' not found.", param=param)


@dataclass
class KeptResponses:
    pins: ResponsePins
    upstream: Upstream
    pools: Pools
    poll_s: float = 1.0
    follow_max_s: float = 3600.0

    def __post_init__(self) -> None:
        self._following: set[asyncio.Task[None]] = set()

    # --- the request path ---------------------------------------------------------------------------

    async def pin_of(self, response: str, tenant: str, param: str | None = None) -> tuple[Pin, Pool, Replica]:
        """Where `tenant`'s response is kept; 404 when the gateway knows of no such response of the tenant's
        (an unknown response is never looked for on a replica: it could be another tenant's)."""
        try:
            pin = await self.pins.get(response)
        except Exception as exc:
            log.warning("response %s: its pin cannot be read (%s)", response, type(exc).__name__)
            raise ResponsesUnavailable("The gateway cannot look up which worker holds this response right now; "
                                       "retry shortly.", headers={"retry-after": "1"}) from None
        if pin is None or pin.tenant != tenant:
            raise not_found(response, param)
        pool = self.pools.by_name.get(pin.pool)
        replica = next((r for r in pool.replicas if r.url == pin.replica), None) if pool is not None else None
        if pool is None or replica is None:  # the configuration changed since: the response is gone with it
            raise not_found(response, param)
        return pin, pool, replica

    async def call(self, parsed: Translated, tenant: str, record_id: str) -> KeptCall:
        """A Responses call: its response's id (sent to the worker), and the pin of the one it continues."""
        own: ResponsesFields = parsed.own
        rid = response_id(record_id)
        parsed.original["request_id"] = rid
        kept = KeptCall(self, rid, tenant, own.store is not False or bool(own.background), bool(own.background))
        if own.previous_response_id is not None:
            kept.continues = await self.pin_of(own.previous_response_id, tenant, "previous_response_id")
        return kept

    # --- background responses -----------------------------------------------------------------------

    def follow(self, kept: KeptCall, outcome: Outcome) -> None:
        task = asyncio.get_running_loop().create_task(self._follow(kept, outcome), name=f"follow {kept.id}")
        self._following.add(task)
        task.add_done_callback(self._following.discard)

    async def _follow(self, kept: KeptCall, outcome: Outcome) -> None:
        assert kept.pool is not None and kept.replica is not None
        url = f"{kept.replica.url}/v1/responses/{quote(kept.id, safe='')}"
        headers = {"x-request-id": outcome.request_id, "accept-encoding": "identity", **kept.pool.headers}
        deadline = time.monotonic() + self.follow_max_s
        wait = self.poll_s
        try:
            while True:
                await asyncio.sleep(wait)
                wait = min(wait * 2, self.poll_s * MAX_POLL_FACTOR)
                try:
                    answer = await self.upstream.get(url, headers)
                    try:
                        status_code, body = answer.status_code, await answer.aread()
                    finally:
                        await answer.aclose()
                except UPSTREAM_ERRORS as exc:  # the replica is away for now: ask again, until the deadline
                    status_code, body = 0, b""
                    log.debug("response %s: asking %s failed (%s)", kept.id, kept.replica.url, type(exc).__name__)
                if status_code == 404:  # the worker lost it (restarted)
                    outcome.error = "ResponseLost"
                    return
                status, usage = read_response(body) if status_code == 200 else (None, None)
                if status in FINAL_STATUSES:
                    outcome.usage = usage
                    outcome.completed = status in ("completed", "incomplete")
                    outcome.cancelled = status == "cancelled"
                    if status == "failed":
                        outcome.error = "ResponseFailed"
                    return
                if time.monotonic() > deadline:
                    outcome.error = "BackgroundTimeout"
                    log.warning("response %s: not finished after %gs; recorded as it is", kept.id, self.follow_max_s)
                    return
        except asyncio.CancelledError:  # the gateway stops: recorded as far as it is known
            outcome.error = "GatewayStopped"
            raise
        finally:
            finish(outcome)

    async def close(self) -> None:
        """At shutdown: the responses still followed are recorded as far as they are known."""
        tasks = list(self._following)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@dataclass(eq=False)
class KeptCall:
    """One Responses call's dealings with the kept responses."""

    service: KeptResponses
    id: str  # the response's id, chosen by the gateway
    tenant: str
    keep: bool  # the worker may store the response: pin it
    background: bool
    continues: tuple[Pin, Pool, Replica] | None = None  # the response it continues, and where that is
    pool: Pool | None = None
    replica: Replica | None = None
    following: bool = False

    def route(self, chosen: Route, requested: str) -> Route:
        """`chosen` to the replica holding the response this call continues (no fallback: none has it). A call
        naming another model than that response's is a 400: the worker that holds it serves its model alone."""
        if self.continues is None:
            return chosen
        pin, pool, _ = self.continues
        if requested != AUTO and chosen.targets[0][0] != pin.model:
            raise InvalidRequest(f"`previous_response_id` names a response of `{pin.model}`, kept by the worker that "
                                 f"made it; a call continuing it goes there: ask for `{pin.model}` or `auto`.",
                                 param="model", code="model_mismatch")
        return replace(chosen, targets=((pin.model, pool),))

    @property
    def pinned(self) -> str | None:
        """The replica the call must go to, if any."""
        return self.continues[2].url if self.continues is not None else None

    def opened(self, model: str, pool: Pool, replica: Replica) -> None:
        """The worker took the call: the response will be kept there."""
        self.pool, self.replica = pool, replica
        if self.keep:
            self.service.pins.put(self.id, Pin(self.tenant, model, pool.name, replica.url))

    def done(self, outcome: Outcome) -> None:
        """The answer is over: the books are closed, or, for a background response the worker is still
        making, closed once it is made."""
        if self.following:
            return
        if (self.background and outcome.status == 200 and not outcome.completed and outcome.error is None
                and outcome.failure is None and self.replica is not None):
            self.following = True
            outcome.cancelled = False  # a client leaving a background stream does not stop the response
            self.service.follow(self, outcome)
            return
        finish(outcome)
