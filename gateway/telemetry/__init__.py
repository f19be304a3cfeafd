"""Observability: traces (`tracing.py`), metrics (`metrics.py`), logs (`logs.py`).

`Telemetry` is created by the app's lifespan and handed to the request path through the
`GatewayContext`: nothing here is global, so each app (and each test) has its own tracer provider and
its own metrics registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from opentelemetry.sdk.trace.export import SpanExporter

from gateway.accounting.records import UsageRecord
from gateway.outcome import Outcome
from gateway.settings import Settings
from gateway.telemetry import logs
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.tracing import Tracing

__all__ = ["Metrics", "Telemetry", "Tracing"]


@dataclass
class Telemetry:
    tracing: Tracing | None  # None: tracing is off (otel_exporter: none and no exporter injected)
    metrics: Metrics = field(default_factory=Metrics)

    @classmethod
    def create(cls, settings: Settings, span_exporter: SpanExporter | None = None) -> Telemetry:
        return cls(Tracing.create(settings, span_exporter))

    def on_record(self, outcome: Outcome, record: UsageRecord) -> None:
        """The recorder built a call's usage record (off the request path): usage metrics, the access line."""
        self.metrics.usage.observe(record)
        trace = outcome.trace
        logs.access(outcome, record, trace.trace_id if trace is not None else None)

    def shutdown(self) -> None:
        if self.tracing is not None:
            self.tracing.shutdown()
