"""What became of one call (`Outcome`), and `finish`, which closes a call's books once by running the steps
after its last byte (gateway/completion.py builds them, in their order)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from gateway.cache.ticket import Ticket
from gateway.inference.usage import Usage
from gateway.learning.shadow.answers import Watch
from gateway.limits.backend import Admission
from router.quality import QualityProbe

log = logging.getLogger("gateway.access")

# What a call is (gateway/inference/endpoints.py), for its record, its access line, its metrics and its spans.
CallKind = Literal["chat", "completion", "responses", "messages", "embeddings", "tokenize", "detokenize", "score",
                   "rerank"]


def operation_of(kind: CallKind) -> str:
    """A call's `operation`, as its usage record, its access line and its metrics name it: its kind, but a
    completion's is OpenTelemetry's `text_completion`."""
    return "text_completion" if kind == "completion" else kind


class Step(NamedTuple):
    """One step after a call's last byte: `run` reads the finished outcome (and the per-call state the request
    path left on it); `name` is for the log when it fails."""

    name: str
    run: Callable[[Outcome], None]


class Trace(Protocol):
    """A sampled call's spans (gateway/telemetry/tracing.py's `RequestTrace`), ended by `finish`."""

    @property
    def trace_id(self) -> str: ...

    def end(self, o: Outcome, status: str, recorded: tuple[float, float] | None) -> None: ...


@dataclass(slots=True)  # one per call in flight and per queued record: no per-instance dict
class Outcome:
    """What became of one call, for the access log and accounting (gateway/accounting/records.py)."""

    request_id: str
    model: str
    started: float
    replica: str | None = None
    status: int = 0
    usage: Usage | None = None
    first_byte: float | None = None
    finished: float | None = None
    completed: bool = False  # the worker finished the answer ([DONE], or a whole JSON body)
    error: str | None = None
    # For accounting. Times above are perf_counter(); `received` is the wall clock at `started`.
    received: float = field(default_factory=time.time)
    record_id: str | None = None  # the id the call is recorded under, when not `request_id`
    requested_model: str | None = None
    pool: str | None = None
    tenant: str = "default"  # auth sets tenant, team and key
    team: str | None = None
    key_id: str | None = None
    policy_rule: str | None = None  # routing sets the rule and the reference model
    reference_model: str | None = None
    cache_hit: bool = False
    failure: str | None = None  # set when the gateway itself ends the call: rejected, timeout, ...
    cancelled: bool = False  # the client went away mid-stream
    content_events: int = 0  # stream events carrying content, relayed (an estimate of tokens)
    prompt: Any = None  # messages / prompt as the client sent them, in memory only, for a token estimate
    prompt_estimate: int | None = None  # routing's count of the prompt's tokens, when it made one (journaled)
    journal_segment: int = 0  # the journal segment holding its opened line (gateway/accounting/journal.py)
    # For telemetry (gateway/telemetry/): what was asked and what the cache did; the trace when sampled.
    kind: CallKind = "chat"
    stream: bool = False
    cache: str | None = None  # "hit" | "miss" | "bypass"; None: the call ended before the cache was asked
    trace: Trace | None = None
    reported: bool = False  # the recorder told telemetry of its record (usage metrics, access line)
    # The steps after the last byte (the app's, from gateway/completion.py), and what the request path left
    # for them: the cache's ticket, the limits' admission, the predictor's view, the shadow's watch.
    steps: tuple[Step, ...] = ()
    ticket: Ticket | None = None
    admission: Admission | None = None
    quality: QualityProbe | None = None
    watch: Watch | None = None

    def answered_in_full(self) -> bool:
        """A worker answered it whole: HTTP 200, complete, not from the cache, neither failed nor cut."""
        return (self.status == 200 and self.completed and not self.cache_hit and self.failure is None
                and self.error is None and not self.cancelled)


def failure_of(error: BaseException) -> str:
    """The status of a call the gateway ended with `error` (before or instead of the worker's answer)."""
    if isinstance(error, asyncio.CancelledError):
        return "client_cancelled"
    if type(error).__name__.endswith("Timeout"):  # ours (UpstreamTimeout) and httpx's
        return "timeout"
    status = getattr(error, "status", None)
    if not isinstance(status, int):
        status = getattr(error, "status_code", None)  # Litestar's own (a body over max_body_bytes: 413)
    if isinstance(status, int):
        if status == 504:
            return "timeout"
        if status in (502, 503):
            return "unavailable"
        if status < 500:
            return "rejected"
    return "internal_error"


def call_status(o: Outcome) -> str:
    """What became of a call: one of STATUSES."""
    if o.failure is not None:
        return o.failure
    if o.completed:
        return "ok"
    if o.cancelled:
        return "client_cancelled"
    if o.error is not None:
        return "timeout" if o.error.endswith("Timeout") else "upstream_error"
    return "upstream_error"  # a non-200 answer, or a stream that ended without [DONE]


def finish(outcome: Outcome) -> None:
    """Closes the books on a call, once: runs its steps in order (each on its own: one that fails is logged
    and the next runs; none breaks the call), then ends its trace."""
    if outcome.finished is not None:
        return
    outcome.finished = time.perf_counter()
    if outcome.usage is not None:
        outcome.prompt = None  # only an estimate needs it
    trace = outcome.trace
    recorded: tuple[float, float] | None = None
    if steps := outcome.steps:
        started = time.perf_counter() if trace is not None else 0.0
        for name, run in steps:
            try:
                run(outcome)
            except Exception:
                log.exception("request %s: %s failed after the call", outcome.request_id, name)
        # The steps took what they need. The outcome may wait in the recorder's queue a while yet: it
        # must not keep the predictor's vector, the shadow's answer or the cache's ticket alive meanwhile.
        outcome.ticket = outcome.admission = outcome.quality = outcome.watch = None
        if trace is not None:
            recorded = (started, time.perf_counter())
    if trace is not None:
        try:
            trace.end(outcome, call_status(outcome), recorded)
        except Exception:  # nor does its trace
            log.exception("request %s: ending its trace failed", outcome.request_id)
