"""Traces: OpenTelemetry spans for the calls the gateway serves, following the GenAI conventions.

One request, when sampled, is this tree (times are the request's own, taken with `perf_counter` on the
way and turned into spans afterwards, so the request path itself only reads a clock):

    POST /v1/chat/completions              SERVER    http.*, gen_ai.*, gateway.* (tenant, team, key id, rule, cache)
    ├── gateway.auth                       INTERNAL  the API key check (the guard)
    ├── gateway.route                      INTERNAL  gateway.route.rule, gateway.route.model, gateway.route.pool
    ├── gateway.limits                     INTERNAL  rate limits and budget reservation (limited keys only)
    ├── gateway.cache                      INTERNAL  gateway.cache.result: hit / miss / bypass
    ├── chat demo-small                    CLIENT    the worker call, to the stream's end; event `first_token`
    └── gateway.inference.usage.record               INTERNAL  the steps after the last byte (gateway/completion.py)

Sampling is decided before anything is created: a request carrying a `traceparent` follows its sampled
flag (parent-based); one without is traced with probability `otel_sample_ratio`. A request that is not
traced creates no span object at all; its `traceparent` (if any) still reaches the worker unchanged. A
traced one sends the worker the upstream span's context (W3C trace context). With `otel_exporter: none`
there is no tracing at all (no provider, nothing propagated).

Never any prompt, completion or key in a span: ids, model names, numbers.
"""

from __future__ import annotations

import logging
import random
import re
import sys
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from gateway.inference.usage import Usage
from gateway.outcome import Outcome
from gateway.routing import Route
from gateway.settings import Settings
from workers.upstream import UpstreamCall

log = logging.getLogger("gateway.telemetry")

SCOPE = "llm-gateway"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# W3C trace context: version-traceid-parentid-flags; a future version may append fields after a dash.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
# gen_ai.operation.name (OpenTelemetry's values): the Responses and Messages APIs are chats.
OPERATIONS = {"chat": "chat", "completion": "text_completion", "responses": "chat", "messages": "chat"}
_ERROR_STATUSES = frozenset({"upstream_error", "timeout", "unavailable", "internal_error"})
MAX_ATTR = 200  # longest client-chosen string kept in an attribute (the requested model name)
MAX_TRACESTATE = 512  # W3C: vendors may drop a longer tracestate; we do not pass one on


def parse_traceparent(value: str | None) -> tuple[str, str, int] | None:
    """(trace id, parent span id, flags) of a well-formed `traceparent`, else None."""
    if not value:
        return None
    m = _TRACEPARENT.fullmatch(value.strip())
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id, int(flags, 16)


AUTH_TIMES = "auth_times"  # the guard's (started, ended) perf_counter readings, in the request's scope state


def auth_times(request: Any) -> tuple[float, float] | None:
    """When the API key check ran for this request (recorded by the guard while tracing is on)."""
    state = request.scope.get("state")
    return state.get(AUTH_TIMES) if state else None


def route_attributes(chosen: Route, requested: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gateway.route.rule": chosen.rule, "gateway.route.model": chosen.targets[0][0],
        "gateway.route.pool": chosen.targets[0][1].name, "gen_ai.request.model": requested[:MAX_ATTR],
    }
    if len(chosen.targets) > 1:
        attributes["gateway.route.fallbacks"] = [m for m, _ in chosen.targets[1:]]
    return attributes


def _address(url: str) -> tuple[str | None, int | None]:
    try:
        parts = urlsplit(url)
        return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None, None


def otlp_traces_url(endpoint: str) -> str:
    """An OTLP/HTTP base URL (http://collector:4318) as the traces endpoint (.../v1/traces)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


def build_exporter(settings: Settings) -> SpanExporter | None:
    if settings.otel_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # Unset endpoint: the exporter's own OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, else localhost:4318.
        # Headers, certificates, compression and timeout come from the standard OTEL_EXPORTER_OTLP_* too.
        if settings.otel_endpoint:
            return OTLPSpanExporter(endpoint=otlp_traces_url(settings.otel_endpoint))
        return OTLPSpanExporter()
    if settings.otel_exporter == "console":
        return ConsoleSpanExporter(out=sys.stdout)
    return None


class Tracing:
    """The app's tracing: a `TracerProvider` of its own (never the global one: its resource, its span
    processor and exporter), shut down with the app.

    Spans are not opened live through a `Tracer`: a request records its steps' clock readings, and when it
    ends, its finished spans are built at once (`ReadableSpan`, what processors and exporters consume) and
    handed to the provider's processor. Nothing is ever "current", so no context is attached to tasks, and
    the SDK's per-span sampling, locking and validation is not paid on the request path.
    """

    def __init__(self, provider: TracerProvider, processor: SpanProcessor, ratio: float) -> None:
        self.provider = provider
        self.processor = processor
        self.ratio = ratio
        self.resource = provider.resource
        self.scope = InstrumentationScope(SCOPE)

    @classmethod
    def create(cls, settings: Settings, exporter: SpanExporter | None = None) -> Tracing | None:
        """From the settings; `exporter` (tests: an in-memory exporter) replaces the configured one and
        gets each request's spans as the request ends. None when tracing is off."""
        processor: SpanProcessor
        if exporter is not None:
            processor = SimpleSpanProcessor(exporter)
        else:
            configured = build_exporter(settings)
            if configured is None:
                return None
            processor = BatchSpanProcessor(configured)
        # Sampling is decided in `begin`, before anything exists (parent-based, then otel_sample_ratio).
        provider = TracerProvider(sampler=ParentBased(ALWAYS_ON),
                                  resource=Resource.create({"service.name": settings.otel_service_name}))
        provider.add_span_processor(processor)
        return cls(provider, processor, settings.otel_sample_ratio)

    def shutdown(self) -> None:
        """Exports what is pending, then stops (blocking: run it off the event loop)."""
        try:
            self.provider.shutdown()
        except Exception:
            log.exception("tracing: shutting the exporter down failed")

    def begin(self, headers: Mapping[str, str], outcome: Outcome, path: str,
              auth: tuple[float, float] | None) -> tuple[RequestTrace | None, dict[str, str] | None]:
        """Whether this request is traced: (its trace, None) when sampled, else (None, the incoming trace
        context to pass on unchanged to the worker, or None). Never raises."""
        try:
            incoming = headers.get(TRACEPARENT)
            parent = parse_traceparent(incoming) if incoming is not None else None
            if parent is None:
                if self.ratio <= 0.0 or (self.ratio < 1.0 and random.random() >= self.ratio):
                    return None, None
                return RequestTrace(self, headers, outcome, path, None, auth), None
            trace_id, span_id, flags = parent
            state = headers.get(TRACESTATE)
            if state is not None and len(state) > MAX_TRACESTATE:
                state = None
            if not flags & 1:  # the caller does not record this trace: neither do we, but pass it on
                assert incoming is not None
                return None, {TRACEPARENT: incoming.strip(), **({TRACESTATE: state} if state else {})}
            remote = SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(flags),
                                 trace_state=TraceState.from_header([state]) if state else None)
            return RequestTrace(self, headers, outcome, path, remote, auth), None
        except Exception:
            log.debug("tracing: could not start a trace", exc_info=True)
            return None, None

    def emit(self, span: ReadableSpan) -> None:
        self.processor.on_end(span)


class _Step:
    """A span in the making: its id now (the worker's traceparent needs the upstream span's), the rest as
    the request goes."""

    __slots__ = ("attributes", "end", "events", "kind", "name", "span_id", "start", "status")

    def __init__(self, name: str, kind: SpanKind, start: int, attributes: dict[str, Any] | None) -> None:
        self.name, self.kind, self.start = name, kind, start
        self.span_id = _span_id()
        self.attributes: dict[str, Any] = attributes if attributes is not None else {}
        self.end = 0
        self.events: list[Event] = []
        self.status = _UNSET


def _span_id() -> int:
    while True:
        value = random.getrandbits(64)
        if value:
            return value


_UNSET, _ERROR = Status(StatusCode.UNSET), Status(StatusCode.ERROR)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


class RequestTrace:
    """The spans of one sampled request. Every method is safe to call in any order; none raises into the
    request (`finish` guards `end`)."""

    __slots__ = ("_base_ns", "_base_perf", "_context", "_parent", "_steps", "_tracing", "client", "server")

    def __init__(self, tracing: Tracing, headers: Mapping[str, str], outcome: Outcome, path: str,
                 parent: SpanContext | None, auth: tuple[float, float] | None) -> None:
        self._tracing = tracing
        self._parent = parent  # the caller's span (remote), or None: a new trace
        # perf_counter -> epoch ns: the request's own clock readings become span times.
        self._base_perf, self._base_ns = outcome.started, int(outcome.received * 1e9)
        trace_id = parent.trace_id if parent is not None else random.getrandbits(128) or 1
        flags = parent.trace_flags if parent is not None else _SAMPLED
        state = parent.trace_state if parent is not None else None
        attributes: dict[str, Any] = {
            "http.request.method": "POST", "http.route": path,
            "gen_ai.operation.name": OPERATIONS.get(outcome.kind, outcome.kind),
            "gateway.request_id": outcome.request_id,
        }
        host = headers.get("host")
        if host:
            address, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
            if address and port.isdigit():
                attributes["server.address"], attributes["server.port"] = address, int(port)
            else:
                attributes["server.address"] = host
        start = auth[0] if auth is not None else outcome.started
        self.server = _Step(f"POST {path}", SpanKind.SERVER, self.ns(start), attributes)
        # The context every span of this request shares (its trace, flags and trace state).
        self._context = (trace_id, flags, state)
        self._steps: list[_Step] = []
        self.client: _Step | None = None
        if auth is not None:
            self.step("gateway.auth", auth[0], auth[1])

    def ns(self, perf: float) -> int:
        return self._base_ns + int((perf - self._base_perf) * 1e9)

    def step(self, name: str, started: float, ended: float, attributes: dict[str, Any] | None = None) -> None:
        """A finished step of the request, as a child span from `started` to `ended` (perf_counter)."""
        step = _Step(name, SpanKind.INTERNAL, self.ns(started), attributes)
        step.end = self.ns(ended)
        self._steps.append(step)

    # --- the worker call ----------------------------------------------------------------------------

    def upstream(self, outcome: Outcome, model: str, pool: str, body: Mapping[str, Any]) -> dict[str, str]:
        """Start the CLIENT span of a call to `model`'s pool; the trace context headers for the worker."""
        self.upstream_failed(None)  # a previous target's span, if one is still open (a fallback)
        operation = OPERATIONS.get(outcome.kind, outcome.kind)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation, "gen_ai.provider.name": "vllm", "gen_ai.request.model": model,
            "gen_ai.request.stream": outcome.stream, "gateway.pool": pool,
        }
        for name, key in (("max_tokens", "gen_ai.request.max_tokens"),
                          ("max_completion_tokens", "gen_ai.request.max_tokens"),
                          ("temperature", "gen_ai.request.temperature"), ("top_p", "gen_ai.request.top_p"),
                          ("seed", "gen_ai.request.seed")):
            value = body.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attributes[key] = value
        n = body.get("n")
        if isinstance(n, int) and not isinstance(n, bool) and n != 1:
            attributes["gen_ai.request.choice.count"] = n
        self.client = step = _Step(f"{operation} {model}", SpanKind.CLIENT, self.ns(time.perf_counter()), attributes)
        self._steps.append(step)
        trace_id, flags, state = self._context
        headers = {TRACEPARENT: f"00-{trace_id:032x}-{step.span_id:016x}-{int(flags):02x}"}
        if state:
            headers[TRACESTATE] = state.to_header()
        return headers

    def upstream_opened(self, call: UpstreamCall) -> None:
        """The worker answered (status and headers)."""
        step = self.client
        if step is None:
            return
        address, port = _address(call.replica.url)
        a = step.attributes
        if address is not None:
            a["server.address"] = address
        if port is not None:
            a["server.port"] = port
        a["gateway.replica"] = call.replica.url
        a["http.response.status_code"] = call.response.status_code

    def upstream_failed(self, error: BaseException | int | None) -> None:
        """The call on this target is over without an answer to relay (`error`: the exception, or the
        status the worker answered before a fallback); ends its span."""
        step, self.client = self.client, None
        if step is None:
            return
        step.end = self.ns(time.perf_counter())
        if error is not None:
            step.attributes["error.type"] = str(error) if isinstance(error, int) else type(error).__name__
            if isinstance(error, int):
                step.attributes["http.response.status_code"] = error
            step.status = _ERROR

    # --- the end ------------------------------------------------------------------------------------

    def end(self, o: Outcome, status: str, recorded: tuple[float, float] | None) -> None:
        """Closes the books on the trace: the upstream span (at the stream's end), the usage record's
        span, then the request's own span; all are handed to the span processor."""
        finished = self.ns(o.finished if o.finished is not None else time.perf_counter())
        usage = o.usage
        failed = status != "ok"
        client = self.client
        if client is not None:
            self.client = None
            a = client.attributes
            if o.first_byte is not None:
                client.events.append(Event("first_token", timestamp=self.ns(o.first_byte)))
                a["gen_ai.response.time_to_first_chunk"] = o.first_byte - o.started
            if o.model:
                a["gen_ai.response.model"] = o.model
            if usage is not None:
                _usage_attributes(a, usage)
            if failed:
                a["error.type"] = o.error or status
                if status in _ERROR_STATUSES:
                    client.status = _ERROR
            client.end = finished
        if recorded is not None:
            self.step("gateway.inference.usage.record", recorded[0], recorded[1])
        server = self.server
        a = server.attributes
        a["gateway.status"], a["gateway.tenant"], a["gateway.stream"] = status, o.tenant, o.stream
        if o.status:
            a["http.response.status_code"] = o.status
        if o.requested_model is not None and o.policy_rule is not None:  # a name routing accepted, never
            a["gen_ai.request.model"] = o.requested_model[:MAX_ATTR]  # whatever a client typed
        if o.model and (o.replica is not None or o.cache_hit):
            a["gen_ai.response.model"] = o.model
        for key, value in (("gateway.team", o.team), ("gateway.key_id", o.key_id),
                           ("gateway.route.rule", o.policy_rule), ("gateway.pool", o.pool),
                           ("gateway.cache", o.cache), ("gateway.replica", o.replica),
                           ("gateway.record_id", o.record_id)):
            if value is not None:
                a[key] = value
        if usage is not None:
            _usage_attributes(a, usage)
        if failed:
            a["error.type"] = o.error or status
            if status in _ERROR_STATUSES:
                server.status = _ERROR
        server.end = max([finished, *(step.end for step in self._steps)])
        self._emit()

    def _emit(self) -> None:
        tracing = self._tracing
        trace_id, flags, state = self._context
        resource, scope = tracing.resource, tracing.scope
        server = self.server
        server_ctx = SpanContext(trace_id, server.span_id, False, flags, state)
        for step in self._steps:
            tracing.emit(ReadableSpan(
                step.name, context=SpanContext(trace_id, step.span_id, False, flags, state), parent=server_ctx,
                resource=resource, attributes=step.attributes, events=tuple(step.events), kind=step.kind,
                status=step.status, start_time=step.start, end_time=step.end or server.end,
                instrumentation_scope=scope))
        tracing.emit(ReadableSpan(
            server.name, context=server_ctx, parent=self._parent, resource=resource, attributes=server.attributes,
            kind=server.kind, status=server.status, start_time=server.start, end_time=server.end,
            instrumentation_scope=scope))

    @property
    def trace_id(self) -> str:
        return f"{self._context[0]:032x}"


class UpstreamSpans:
    """The worker calls of one traced request, as forwarding reports them (`workers.forward.CallObserver`):
    a CLIENT span per target tried."""

    __slots__ = ("body", "outcome", "trace")

    def __init__(self, trace: RequestTrace, outcome: Outcome, body: Mapping[str, Any]) -> None:
        self.trace, self.outcome, self.body = trace, outcome, body

    def calling(self, model: str, pool: str) -> dict[str, str]:
        return self.trace.upstream(self.outcome, model, pool, self.body)

    def failed(self, error: BaseException | int) -> None:
        self.trace.upstream_failed(error)

    def opened(self, call: UpstreamCall) -> None:
        self.trace.upstream_opened(call)


def _usage_attributes(attributes: dict[str, Any], usage: Usage) -> None:
    attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
    attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
    details = usage.prompt_tokens_details
    if details is not None and details.cached_tokens:
        attributes["gen_ai.usage.cache_read.input_tokens"] = details.cached_tokens
