"""The OpenAI-compatible endpoints. Thin: parse what the gateway needs, route, open the call, relay."""

from __future__ import annotations

import logging
import time
from typing import Any

from litestar import asgi
from litestar.connection import ASGIConnection
from litestar.handlers import ASGIRouteHandler
from litestar.types import Receive, Scope, Send

from gateway.auth.principal import Principal, principal_of
from gateway.cache.service import HEADER as CACHE_HEADER
from gateway.cache.service import ResponseCache
from gateway.cache.ticket import BYPASS, Ticket
from gateway.context import GatewayContext
from gateway.inference.by_name import route_by_name
from gateway.inference.endpoints import ENDPOINTS, Endpoint
from gateway.inference.event_relay import EventStream
from gateway.inference.kept_responses import KeptCall
from gateway.inference.openai_request import ParsedRequest, prompt_prefix
from gateway.inference.pooling_request import prompt_of
from gateway.inference.relay import RelayStream
from gateway.inference.translated import Translated, body_of
from gateway.limits.service import Limits
from gateway.outcome import Outcome, failure_of, finish
from gateway.replies import Reply, read_body
from gateway.request_id import new_id, request_id
from gateway.routing import ActivePolicy, Route, route
from gateway.telemetry.tracing import RequestTrace, UpstreamSpans, auth_times, route_attributes
from router.errors import IncompleteBody
from workers.forward import forward_call
from workers.pool import Pool
from workers.upstream import UpstreamCall

log = logging.getLogger("gateway")

async def _open(
    ctx: GatewayContext, endpoint: Endpoint, chosen: Route, parsed: ParsedRequest, body: bytes, rid: str,
    outcome: Outcome, trace: RequestTrace | None, trace_headers: dict[str, str] | None, pinned: str | None = None,
) -> tuple[str, Pool, UpstreamCall, bool]:
    """The call on the first of the route's targets that answers (workers/forward.py), and whether the
    usage chunk the client did not ask for is to be dropped from its stream. `pinned`: the one replica it may
    go to (the one holding the response it continues)."""
    max_tokens = chosen.decision.max_tokens if chosen.decision else None
    strip_usage = False

    def prepare(model: str, pool: Pool) -> tuple[bytes, bytes | None]:
        nonlocal strip_usage
        payload, strip_usage = endpoint.prepare(parsed, model, body, max_tokens)
        return payload, prompt_prefix(parsed.data, pool.affinity.prefix_chars) if pool.affinity else None

    # Journaled before a worker has it: if the gateway dies meanwhile, the call is still recorded (incomplete).
    ctx.accounting.recorder.opened(outcome, chosen.features.prompt_tokens if chosen.features is not None else None)
    # Traced: the worker continues the upstream span's trace instead of the caller's.
    spans = UpstreamSpans(trace, outcome, parsed.data) if trace is not None else None
    done = await forward_call(ctx.upstream, chosen.targets, endpoint.path, prepare, rid, ctx.settings.upstream_attempts,
                              trace_headers, spans, pinned)
    return done.model, done.pool, done.call, strip_usage


async def forward(request: ASGIConnection[Any, Any, Any, Any], ctx: GatewayContext,
                  endpoint: Endpoint) -> Reply | RelayStream:
    """One inference call: route, admit (rate limits and budgets), the cache, forward to a worker, relay."""
    started = time.perf_counter()
    rid = request_id(request)
    # Every call ends in finish(outcome), which runs the steps after its last byte (gateway/completion.py).
    outcome = Outcome(request_id=rid, model="", started=started, kind=endpoint.kind, steps=ctx.completion)
    if request.headers.get("x-request-id") == rid:  # the client's own id: recorded under one of ours
        outcome.record_id = new_id()
    principal = principal_of(request)  # from the API key only (gateway/auth/guard.py), never from headers
    outcome.tenant, outcome.team, outcome.key_id = principal.tenant, principal.team, principal.key_id
    trace: RequestTrace | None = None
    trace_headers: dict[str, str] | None = None  # the caller's trace context, passed on when not traced here
    if (tracing := ctx.telemetry.tracing) is not None:
        trace, trace_headers = tracing.begin(request.headers, outcome, endpoint.path, auth_times(request))
        outcome.trace = trace
    try:
        body = await read_body(request.receive, request.headers.get("content-length"), ctx.settings.max_body_bytes)
        active = ctx.policies.active  # the policy the call keeps to its end, whatever reloads meanwhile
        parsed = endpoint.parse(body, active.policy.request_limits)  # its request limits: 400 past them
        kept = await _kept(ctx, parsed, outcome) if endpoint.keeps_responses else None
        chosen = _route(ctx, endpoint, active, request, parsed, principal, outcome, trace)
        if kept is not None and kept.continues is not None:  # to the replica holding the response it continues
            chosen = kept.route(chosen, parsed.fields.model)
            outcome.model, outcome.pool = chosen.targets[0][0], chosen.targets[0][1].name
        # The cache's lookup is issued first and awaited after the limits' admission: the two share one
        # Redis round trip (gateway/redis_batch.py).
        mark = time.perf_counter()
        if isinstance(parsed, Translated) and (parsed.fields.stream or (kept is not None and kept.background)):
            ticket = BYPASS  # its answer is a stream of named events, or made later: a whole JSON answer is cached
        else:
            ticket = ctx.cache.ask(request.headers, chosen, body_of(parsed), endpoint.kind, outcome)
        limit_headers: dict[str, str] = {}
        if ctx.limits is not None and principal.limited:
            limit_headers = await _admit(ctx.limits, ctx.cache, ticket, principal, chosen, parsed, len(body), outcome,
                                         trace)
        cached = await ctx.cache.resolve(ticket, parsed.fields, outcome)
        outcome.cache = "hit" if cached.entry is not None else cached.status
        if trace is not None:
            trace.step("gateway.cache", mark, time.perf_counter(), {"gateway.cache.result": outcome.cache})
        if cached.entry is not None:  # a hit: answered from the response cache, no worker
            return ctx.cache.respond(cached, parsed.fields, outcome,
                                     {"x-request-id": rid, "x-gateway-route": chosen.header, **limit_headers})
        model, pool, call, strip_usage = await _open(ctx, endpoint, chosen, parsed, body, rid, outcome, trace,
                                                     trace_headers, kept.pinned if kept is not None else None)
        if kept is not None and call.response.status_code == 200:
            kept.opened(model, pool, call.replica)  # pinned before the client has a byte of the response
    except IncompleteBody:
        # The client left (or was timed out) before its body was in: no call was made, so none is billed or
        # recorded. Its steps are skipped; its trace, when sampled, still ends.
        outcome.steps = ()
        outcome.failure, outcome.error = "client_cancelled", IncompleteBody.__name__
        finish(outcome)
        raise
    except BaseException as exc:
        outcome.failure, outcome.error = failure_of(exc), type(exc).__name__
        outcome.status = getattr(exc, "status", None) or getattr(exc, "status_code", None) or 0
        finish(outcome)
        raise
    # The relay: the worker's answer back to the client, as it comes.
    outcome.model, outcome.pool = model, pool.name
    outcome.replica, outcome.status = call.replica.url, call.response.status_code
    headers = {"x-request-id": rid, "x-gateway-model": model, "x-gateway-route": chosen.header,
               CACHE_HEADER: cached.status, **limit_headers}
    media_type = call.response.headers.get("content-type", "application/json")
    watch = outcome.watch  # a call sampled for a shadow evaluation keeps its answer
    close = kept.done if kept is not None else finish  # a background response's books close once it is made
    if parsed.fields.stream and call.response.status_code == 200:
        tap = cached.stream_tap()
        if watch is not None:
            tap = watch.tap(tap)
        if endpoint.events is not None:
            return EventStream(call, strip_usage, outcome, tap, media_type, headers, endpoint.events, close)
        return RelayStream(call, strip_usage, outcome, tap, media_type, headers)
    try:
        content = await call.response.aread()
    except BaseException as exc:
        outcome.failure, outcome.error = failure_of(exc), type(exc).__name__
        finish(outcome)
        raise
    finally:
        await call.aclose()
    outcome.first_byte = time.perf_counter()
    if call.response.status_code == 200:
        outcome.usage = endpoint.read_usage(content)
        if endpoint.answer_headers:
            _pass_headers(endpoint, call, headers, outcome)
        outcome.completed = True
        cached.answer(content)
        if watch is not None:
            watch.body = content
        if kept is not None and kept.background:
            outcome.completed = False  # only queued: the worker makes it after this answer
    close(outcome)
    return Reply(content, call.response.status_code, media_type, headers)


def _pass_headers(endpoint: Endpoint, call: UpstreamCall, headers: dict[str, str], outcome: Outcome) -> None:
    """The worker's headers the endpoint passes on; the usage from them when the body has none (vLLM's
    embeddings as bytes carry it, and their layout, in `metadata`)."""
    for name in endpoint.answer_headers:
        if (value := call.response.headers.get(name)) is not None:
            headers[name] = value
            if outcome.usage is None:
                outcome.usage = endpoint.read_usage(value.encode())


def _route(ctx: GatewayContext, endpoint: Endpoint, active: ActivePolicy, request: ASGIConnection[Any, Any, Any, Any],
           parsed: ParsedRequest, principal: Principal, outcome: Outcome, trace: RequestTrace | None) -> Route:
    """The call's route under `active`, the policy in force when it arrived (kept to its end, whatever
    reloads meanwhile), written on its outcome; a call the predictor routed keeps the predictor's view (for
    feedback) and may be sampled for a shadow evaluation."""
    fields = parsed.fields
    outcome.requested_model, outcome.stream = fields.model, bool(fields.stream)
    mark = time.perf_counter()
    if endpoint.routed_as is None:  # by the model's name alone
        outcome.prompt = prompt_of(endpoint.kind, parsed.data)  # for an estimate only
        chosen = route_by_name(active, fields.model, endpoint.runner, endpoint.path, endpoint.cached)
    else:
        outcome.prompt = parsed.data.get("messages", parsed.data.get("prompt"))  # for an estimate only
        chosen = route(active, parsed.data, endpoint.routed_as, fields.model, request.headers, principal.caller,
                       ctx.rates.current())
    outcome.policy_rule = chosen.rule
    if chosen.decision is not None:
        outcome.reference_model = chosen.decision.reference_model
    outcome.model, outcome.pool = chosen.targets[0][0], chosen.targets[0][1].name
    if trace is not None:
        trace.step("gateway.route", mark, time.perf_counter(), route_attributes(chosen, fields.model))
    if chosen.quality is not None:
        outcome.quality = chosen.quality
        if ctx.shadow is not None and not isinstance(parsed, Translated):  # it asks chat or completion again
            ctx.shadow.sample(outcome, parsed.data)
    return chosen


async def _kept(ctx: GatewayContext, parsed: ParsedRequest, outcome: Outcome) -> KeptCall:
    """A Responses call's dealings with the responses workers keep: its response's id, and where the one it
    continues is (a 404 when the caller's tenant made none of that id)."""
    assert isinstance(parsed, Translated) and ctx.responses is not None
    return await ctx.responses.call(parsed, outcome.tenant, outcome.record_id or outcome.request_id)


async def _admit(limits: Limits, cache: ResponseCache, ticket: Ticket, principal: Principal, chosen: Route,
                 parsed: ParsedRequest, size: int, outcome: Outcome, trace: RequestTrace | None) -> dict[str, str]:
    """Rate limits and budget reservation (gateway/limits/): 429 here, settled when the call is over; the
    x-ratelimit-* headers of its answer. Refused, the cache lookup issued meanwhile is abandoned. `size`: the
    body's bytes as received, which bound its prompts' tokens."""
    mark = time.perf_counter()
    try:
        headers = await limits.admit(principal, chosen, parsed.data, size, outcome)
    except BaseException:
        cache.abandon(ticket)
        raise
    if trace is not None:
        trace.step("gateway.limits", mark, time.perf_counter())
    return headers


async def _serve(scope: Scope, receive: Receive, send: Send, path: str) -> None:
    """Raw ASGI (gateway/replies.py); what `forward` raises is rendered by the app's exception handlers."""
    request: ASGIConnection[Any, Any, Any, Any] = ASGIConnection(scope, receive)
    answer = await forward(request, request.app.state.ctx, ENDPOINTS[path])
    await answer.send(receive, send)


# POSTs to these exact paths take gateway/front.py's short way; these routes are Litestar's for the rest
# (the guard answers 405 for other methods, before asking for a key; a path with a trailing slash).
@asgi("/v1/chat/completions", copy_scope=False, opt={"methods": ("POST",)})
async def chat_completions(scope: Scope, receive: Receive, send: Send) -> None:
    await _serve(scope, receive, send, "/v1/chat/completions")


@asgi("/v1/completions", copy_scope=False, opt={"methods": ("POST",)})
async def completions(scope: Scope, receive: Receive, send: Send) -> None:
    await _serve(scope, receive, send, "/v1/completions")


@asgi("/v1/responses", copy_scope=False, opt={"methods": ("POST",)})
async def create_response(scope: Scope, receive: Receive, send: Send) -> None:
    await _serve(scope, receive, send, "/v1/responses")


@asgi("/v1/messages", copy_scope=False, opt={"methods": ("POST",)})
async def create_message(scope: Scope, receive: Receive, send: Send) -> None:
    await _serve(scope, receive, send, "/v1/messages")


def _by_name_route(path: str) -> ASGIRouteHandler:
    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        await _serve(scope, receive, send, path)

    return asgi(path, copy_scope=False, opt={"methods": ("POST",)})(serve)


# The endpoints routed by the model's name alone (embeddings, tokenize, score, rerank, ...), as Litestar's too.
BY_NAME_ROUTES = [_by_name_route(path) for path, e in ENDPOINTS.items() if e.routed_as is None]
