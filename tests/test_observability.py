"""Observability: traces, metrics and logs.

Traces and the secret scan run the gateway in this process (`tests/inprocess_gateway.py`: the app built
with an in-memory span exporter, uvicorn in a thread, simulated workers launched by the app's own launch
specs), so the exported spans can be read; the simulators show what trace context reached them
(`GET /sim/last-request-headers`). Metrics are scraped after known traffic and checked against the
usage the workers reported. `/metrics` on its own port and behind an admin key run as `gateway serve`.
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from gateway.accounting.spool import Spool
from gateway.settings import SettingsError, load_settings
from gateway.telemetry.logs import AccessLine, JsonFormatter
from gateway.telemetry.tracing import parse_traceparent
from tests.gateway_process import GatewayProcess, start_gateway
from tests.inprocess_gateway import InProcessGateway
from workers.launcher import free_port

FAST = {"recorder_flush_interval_s": 0.05}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Exporter(InMemorySpanExporter):
    """An in-memory exporter that remembers being shut down (the app shuts its provider down at stop)."""

    was_shut_down = False

    def shutdown(self) -> None:
        self.was_shut_down = True
        super().shutdown()


@pytest.fixture(scope="module")
def exporter() -> Exporter:
    return Exporter()


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, exporter: Exporter) -> Iterator[InProcessGateway]:
    gw = InProcessGateway(tmp_path_factory.mktemp("traced"), FAST, span_exporter=exporter).start()
    yield gw
    gw.stop()
    assert exporter.was_shut_down  # the app's provider was shut down with it (pending spans exported)


def prompt(text: str = "Hello") -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{text} {uuid.uuid4().hex[:8]}"}]  # distinct: never a stale cache hit


def greeting() -> list[dict[str, str]]:
    """A distinct one-liner that `auto` routes by the shipped `short-chat` rule (at most 10 prompt tokens),
    whatever the quality predictor thinks of it."""
    return [{"role": "user", "content": f"Hi {uuid.uuid4().int % 10**6:06d}"}]


def trace_of(exporter: InMemorySpanExporter, request_id: str, timeout: float = 5.0) -> list[ReadableSpan]:
    """Every span of the trace whose SERVER span is the request `request_id`'s (once that span ended)."""
    deadline = time.monotonic() + timeout
    while True:
        spans = exporter.get_finished_spans()
        server = [s for s in spans if s.kind == SpanKind.SERVER and s.attributes
                  and s.attributes.get("gateway.request_id") == request_id]
        if server:
            assert len(server) == 1
            trace_id = server[0].context.trace_id
            return [s for s in spans if s.context.trace_id == trace_id]
        assert time.monotonic() < deadline, f"no trace for request {request_id}"
        time.sleep(0.02)


def tree(spans: list[ReadableSpan]) -> tuple[ReadableSpan, dict[str, ReadableSpan]]:
    """(the SERVER span, its children by name); every span of the trace is one of them."""
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    children = {s.name: s for s in spans if s is not server}
    assert len(children) == len(spans) - 1, [s.name for s in spans]
    for child in children.values():
        assert child.parent is not None and child.parent.span_id == server.context.span_id, child.name
        assert server.start_time <= child.start_time <= child.end_time <= server.end_time, child.name
    return server, children


def replica_urls(base_url: str, pool: str) -> list[str]:
    return [r["url"] for r in httpx.get(base_url + "/readyz").json()["pools"][pool]["replicas"]]


def last_headers(replica: str) -> dict[str, str]:
    return httpx.get(replica + "/sim/last-request-headers").json()  # type: ignore[no-any-return]


def read_stream(response: httpx.Response) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    events, usage = [], None
    for line in response.iter_lines():
        if line.startswith("data: {"):
            event = json.loads(line[6:])
            events.append(event)
            if event.get("usage"):
                usage = event["usage"]
    return events, usage


# --- traces --------------------------------------------------------------------------------------------


def test_a_streamed_request_is_one_span_tree_continuing_the_callers_trace(
        traced: InProcessGateway, exporter: Exporter) -> None:
    rid = f"obs-stream-{uuid.uuid4().hex[:8]}"
    headers = {**traced.auth, "x-request-id": rid, "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
               "tracestate": "vendor=opaque"}
    body = {"model": "auto", "messages": greeting(), "max_tokens": 12, "stream": True,
            "stream_options": {"include_usage": True}, "temperature": 0}
    with httpx.stream("POST", traced.api + "/chat/completions", json=body, headers=headers, timeout=30) as r:
        assert r.status_code == 200
        events, usage = read_stream(r)
        rule, model = r.headers["x-gateway-route"], r.headers["x-gateway-model"]
    assert usage is not None and events
    assert (rule, model) == ("short-chat", "demo-small")

    server, children = tree(trace_of(exporter, rid))
    assert set(children) == {"gateway.auth", "gateway.route", "gateway.cache", f"chat {model}",
                             "gateway.inference.usage.record"}
    # The caller's trace, continued.
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert server.parent is not None and server.parent.is_remote and f"{server.parent.span_id:016x}" == PARENT_ID
    assert server.name == "POST /v1/chat/completions"
    a = server.attributes or {}
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "auto"
    assert a["gen_ai.response.model"] == model and a["gateway.route.rule"] == rule
    assert a["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert a["http.response.status_code"] == 200 and a["gateway.status"] == "ok" and a["gateway.stream"] is True
    assert a["gateway.cache"] == "miss" and a["gateway.tenant"] == "default" and a["gateway.key_id"] == "dev"
    assert server.status.status_code == StatusCode.UNSET

    route = children["gateway.route"].attributes or {}
    assert route["gateway.route.rule"] == rule and route["gateway.route.model"] == model
    assert (children["gateway.cache"].attributes or {})["gateway.cache.result"] == "miss"

    upstream = children[f"chat {model}"]
    u = upstream.attributes or {}
    assert upstream.kind == SpanKind.CLIENT
    assert u["gen_ai.operation.name"] == "chat" and u["gen_ai.request.model"] == model
    assert u["gen_ai.response.model"] == model and u["gen_ai.request.max_tokens"] == 12
    assert u["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert u["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert u["http.response.status_code"] == 200 and u["server.address"] == "127.0.0.1"
    (first,) = [e for e in upstream.events if e.name == "first_token"]
    assert upstream.start_time < first.timestamp < upstream.end_time  # the stream went on after it
    assert 0 < u["gen_ai.response.time_to_first_chunk"] < (upstream.end_time - upstream.start_time) / 1e9

    # The worker continues the trace from the upstream span (W3C trace context).
    replica = str(u["gateway.replica"])
    assert u["server.port"] == int(replica.rsplit(":", 1)[1])
    seen = last_headers(replica)
    assert seen["traceparent"] == f"00-{TRACE_ID}-{upstream.context.span_id:016x}-01"
    assert seen["tracestate"] == "vendor=opaque" and seen["x-request-id"] == rid


def test_a_cached_answer_is_traced_without_a_worker_call(traced: InProcessGateway, exporter: Exporter) -> None:
    body = {"model": "auto", "messages": prompt("Cache me"), "max_tokens": 8, "temperature": 0}
    first = httpx.post(traced.api + "/chat/completions", json=body, headers=traced.auth, timeout=30)
    assert first.headers["x-gateway-cache"] == "miss"
    rid = f"obs-hit-{uuid.uuid4().hex[:8]}"
    hit = httpx.post(traced.api + "/chat/completions", json=body, headers={**traced.auth, "x-request-id": rid})
    assert hit.status_code == 200 and hit.headers["x-gateway-cache"] == "hit"
    usage = hit.json()["usage"]

    server, children = tree(trace_of(exporter, rid))
    assert set(children) == {"gateway.auth", "gateway.route", "gateway.cache", "gateway.inference.usage.record"}
    assert server.parent is None  # no traceparent: a new trace (sampled at otel_sample_ratio 1)
    assert (children["gateway.cache"].attributes or {})["gateway.cache.result"] == "hit"
    a = server.attributes or {}
    assert a["gateway.cache"] == "hit" and a["gateway.status"] == "ok"
    assert a["gen_ai.response.model"] == hit.headers["x-gateway-model"]
    assert a["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert "gateway.replica" not in a


def test_an_unsampled_caller_trace_is_passed_on_unchanged_and_not_recorded(
        traced: InProcessGateway, exporter: Exporter) -> None:
    rid = f"obs-unsampled-{uuid.uuid4().hex[:8]}"
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-00"
    r = httpx.post(traced.api + "/chat/completions", headers={**traced.auth, "x-request-id": rid,
                                                              "traceparent": traceparent},
                   json={"model": "demo-small", "messages": prompt(), "max_tokens": 4})
    assert r.status_code == 200
    (replica,) = replica_urls(traced.base_url, "small")
    assert last_headers(replica)["traceparent"] == traceparent
    with pytest.raises(AssertionError, match="no trace"):
        trace_of(exporter, rid, timeout=0.5)


def test_streams_that_fail_or_are_left_end_their_spans(traced: InProcessGateway, exporter: Exporter) -> None:
    (replica,) = replica_urls(traced.base_url, "small")
    httpx.post(replica + "/sim/faults", json={"die_rate": 1.0, "die_after_tokens": 3}).raise_for_status()
    try:
        rid = f"obs-died-{uuid.uuid4().hex[:8]}"
        body = {"model": "demo-small", "messages": prompt(), "max_tokens": 30, "stream": True}
        with httpx.stream("POST", traced.api + "/chat/completions", json=body,
                          headers={**traced.auth, "x-request-id": rid}) as r:
            assert r.status_code == 200
            r.read()
    finally:
        httpx.post(replica + "/sim/faults", json={"die_rate": 0.0}).raise_for_status()
    server, children = tree(trace_of(exporter, rid))
    upstream = children["chat demo-small"]
    assert (server.attributes or {})["gateway.status"] == "upstream_error"
    assert server.status.status_code == StatusCode.ERROR and upstream.status.status_code == StatusCode.ERROR
    assert (upstream.attributes or {})["error.type"] == "ClientPayloadError"  # aiohttp: the body was cut short

    rid = f"obs-left-{uuid.uuid4().hex[:8]}"
    body = {"model": "demo-small", "messages": prompt(), "max_tokens": 400, "stream": True}  # ~2 s of tokens
    with httpx.stream("POST", traced.api + "/chat/completions", json=body,
                      headers={**traced.auth, "x-request-id": rid}) as r:
        next(r.iter_raw())  # the first events, then the client leaves
    server, children = tree(trace_of(exporter, rid))
    assert (server.attributes or {})["gateway.status"] == "client_cancelled"
    assert (server.end_time - server.start_time) / 1e9 < 1.5  # ended when the client left, not at the end
    assert "first_token" in [e.name for e in children["chat demo-small"].events]


def test_sampling_ratio_zero_traces_only_callers_that_sample(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    gw = InProcessGateway(tmp_path, {**FAST, "otel_sample_ratio": 0.0}, span_exporter=exporter).start()
    try:
        (replica,) = replica_urls(gw.base_url, "small")
        body = {"model": "demo-small", "messages": prompt(), "max_tokens": 4}
        assert httpx.post(gw.api + "/chat/completions", json=body, headers=gw.auth).status_code == 200
        assert "traceparent" not in last_headers(replica)
        rid = "obs-parent-sampled"
        r = httpx.post(gw.api + "/chat/completions", json=body, headers={
            **gw.auth, "x-request-id": rid, "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
        assert r.status_code == 200
        tree(trace_of(exporter, rid))  # parent-based: the caller's decision wins
        assert len(exporter.get_finished_spans()) == 6  # that request's tree, nothing of the first
        assert last_headers(replica)["traceparent"].startswith(f"00-{TRACE_ID}-")
    finally:
        gw.stop()


def test_without_tracing_nothing_is_propagated(gateway: GatewayProcess) -> None:
    """The embedded default (`otel_exporter: none`): no tracing, and the caller's context is not sent on."""
    (replica,) = replica_urls(gateway.base_url, "small")
    r = httpx.post(gateway.api + "/chat/completions", headers={**gateway.auth, "traceparent": f"00-{TRACE_ID}-"
                                                                                            f"{PARENT_ID}-01"},
                   json={"model": "demo-small", "messages": prompt(), "max_tokens": 4})
    assert r.status_code == 200
    assert "traceparent" not in last_headers(replica)


@pytest.mark.parametrize(("value", "parsed"), [
    (f"00-{TRACE_ID}-{PARENT_ID}-01", (TRACE_ID, PARENT_ID, 1)),
    (f" 00-{TRACE_ID}-{PARENT_ID}-00 ", (TRACE_ID, PARENT_ID, 0)),
    (f"01-{TRACE_ID}-{PARENT_ID}-01-future", (TRACE_ID, PARENT_ID, 1)),  # a later version may add fields
    (f"00-{TRACE_ID}-{PARENT_ID}-01-extra", None),
    (f"ff-{TRACE_ID}-{PARENT_ID}-01", None),
    (f"00-{'0' * 32}-{PARENT_ID}-01", None),
    (f"00-{TRACE_ID}-{'0' * 16}-01", None),
    (f"00-{TRACE_ID.upper()}-{PARENT_ID}-01", None),
    ("00-abc-def-01", None), ("", None), (None, None),
])
def test_traceparent_parsing(value: str | None, parsed: tuple[str, str, int] | None) -> None:
    assert parse_traceparent(value) == parsed


# --- metrics -------------------------------------------------------------------------------------------


def scrape(base_url: str, headers: dict[str, str] | None = None) -> dict[str, list[tuple[dict[str, str], float]]]:
    r = httpx.get(base_url + "/metrics", headers=headers or {})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for ls, v in samples.get(name, []) if all(ls.get(k) == want for k, want in labels.items()))


def test_metrics_count_known_traffic(tmp_path: Path) -> None:
    gw = InProcessGateway(tmp_path, FAST).start()  # tracing off: metrics do not depend on it
    try:
        usages = []
        for _ in range(2):  # not deterministic: the cache is bypassed
            r = httpx.post(gw.api + "/chat/completions", headers=gw.auth,
                           json={"model": "demo-small", "messages": prompt(), "max_tokens": 6})
            assert r.status_code == 200 and r.headers["x-gateway-cache"] == "bypass"
            usages.append(r.json()["usage"])
        with httpx.stream("POST", gw.api + "/chat/completions", headers=gw.auth, json={
                "model": "demo-small", "messages": prompt(), "max_tokens": 9, "stream": True,
                "stream_options": {"include_usage": True}}) as r:
            usages.append(read_stream(r)[1])
        cacheable = {"model": "demo-small", "messages": prompt(), "max_tokens": 5, "temperature": 0}
        miss = httpx.post(gw.api + "/chat/completions", headers=gw.auth, json=cacheable)
        assert miss.headers["x-gateway-cache"] == "miss"
        usages.append(miss.json()["usage"])
        hit = httpx.post(gw.api + "/chat/completions", headers=gw.auth, json=cacheable)
        assert hit.headers["x-gateway-cache"] == "hit"
        unknown = httpx.post(gw.api + "/chat/completions", headers=gw.auth,
                             json={"model": "no-such-model-xyz", "messages": prompt()})
        assert unknown.status_code == 404
        assert httpx.post(gw.api + "/chat/completions", json=cacheable).status_code == 401
        gw.flush()

        m = scrape(gw.base_url)  # no key needed
        ok = {"operation": "chat", "model": "demo-small", "pool": "small", "status": "ok", "code": "200"}
        assert total(m, "gateway_requests_total", **ok) == 5
        assert total(m, "gateway_requests_total", model="unknown", status="rejected", code="404", route="none") == 1
        assert total(m, "gateway_requests_total") == 6
        assert total(m, "gateway_auth_rejected_total", code="missing_api_key", http_status="401") == 1
        assert total(m, "gateway_request_duration_seconds_count") == 6
        assert total(m, "gateway_request_duration_seconds_count", cache="hit") == 1
        assert total(m, "gateway_time_to_first_token_seconds_count", stream="true") == 1
        assert total(m, "gateway_time_to_first_token_seconds_count") == 5  # the 404 never had a first byte
        # Tokens the workers processed: exactly their usage (the cache hit's are not counted again).
        who = {"tenant": "default", "team": "dev", "model": "demo-small"}
        assert total(m, "gateway_usage_tokens_total", type="input", **who) == sum(u["prompt_tokens"] for u in usages)
        assert total(m, "gateway_usage_tokens_total", type="output", **who) == \
            sum(u["completion_tokens"] for u in usages)
        assert total(m, "gateway_cache_lookups_total", result="hit") == 1
        assert total(m, "gateway_cache_lookups_total", result="miss") == 1
        assert total(m, "gateway_cache_lookups_total", result="bypass") == 3
        assert total(m, "gateway_cache_stores_total") == 1
        # Cost: the accounting's own figure.
        report = httpx.get(gw.api + "/reports/usage", params={"group_by": "model"}, headers=gw.auth).json()
        recorded = sum(Decimal(row["cost"]) for row in report["rows"])
        assert recorded > 0
        assert total(m, "gateway_cost_total", currency="USD", **who) == pytest.approx(float(recorded), rel=1e-9)
        assert total(m, "gateway_savings_total", kind="cache", **who) > 0
        assert total(m, "gateway_recorder_enqueued_total") == 6 and total(m, "gateway_recorder_written_total") == 6
        assert total(m, "gateway_recorder_queue_depth") == 0 and total(m, "gateway_recorder_spool_records") == 0
        assert total(m, "gateway_recorder_database_up") == 1 and total(m, "gateway_recorder_db_failures_total") == 0
        # Replicas, at scrape time.
        for pool, model in (("small", "demo-small"), ("large", "demo-large")):
            (url,) = replica_urls(gw.base_url, pool)
            replica = {"pool": pool, "model": model, "replica": url}
            assert total(m, "gateway_replica_healthy", **replica) == 1
            assert total(m, "gateway_replica_in_flight", **replica) == 0
            assert total(m, "gateway_replica_circuit_open", **replica) == 0
            for gauge in ("gateway_replica_kv_cache_usage_ratio", "gateway_replica_running",
                          "gateway_replica_waiting", "gateway_replica_load"):
                assert any(ls == replica for ls, _ in m[gauge]), gauge
        # Bounded labels: what a client typed never becomes one.
        assert not any("no-such-model-xyz" in json.dumps(ls) for series in m.values() for ls, _ in series)

        # A replica that stops answering its health checks shows at the next scrape.
        (url,) = replica_urls(gw.base_url, "large")
        httpx.post(url + "/sim/faults", json={"health_status": 503}).raise_for_status()
        deadline = time.monotonic() + 10
        while total(scrape(gw.base_url), "gateway_replica_healthy", replica=url) != 0:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        httpx.post(url + "/sim/faults", json={"health_status": 200}).raise_for_status()
    finally:
        gw.stop()


def test_metrics_can_require_an_admin_key(tmp_path: Path) -> None:
    gw = InProcessGateway(tmp_path, {**FAST, "metrics_auth": "admin"}).start()
    try:
        assert httpx.get(gw.base_url + "/metrics").status_code == 401
        r = httpx.get(gw.base_url + "/metrics", headers=gw.auth)  # the development key is an admin's
        assert r.status_code == 200 and "gateway_replica_healthy" in r.text
    finally:
        gw.stop()


def test_metrics_on_their_own_port(tmp_path: Path) -> None:
    port = free_port()
    gw = start_gateway(tmp_path, {"metrics_port": port, "metrics_auth": "admin"})
    try:
        metrics = f"http://127.0.0.1:{port}/metrics"
        assert httpx.get(gw.base_url + "/metrics", headers=gw.auth).status_code == 404  # not on the API's port
        assert httpx.get(metrics).status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=gw.auth).status_code == 404
        r = httpx.post(gw.api + "/chat/completions", headers=gw.auth,
                       json={"model": "demo-small", "messages": prompt(), "max_tokens": 3})
        assert r.status_code == 200
        r = httpx.get(metrics, headers=gw.auth)
        assert r.status_code == 200 and "gateway_requests_total{" in r.text
    finally:
        gw.stop()
    assert gw.process.returncode == 0  # both servers stopped cleanly
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_metrics_are_open_by_default(gateway: GatewayProcess) -> None:
    r = httpx.get(gateway.base_url + "/metrics")
    assert r.status_code == 200 and "# TYPE gateway_requests_total counter" in r.text


def test_budget_gauges(tmp_path: Path) -> None:
    gw = InProcessGateway(tmp_path, {**FAST, "metrics_budget_refresh_s": 0}).start()
    try:
        created = httpx.post(gw.base_url + "/admin/keys", headers=gw.auth, json={
            "tenant": "acme", "team": "search", "role": "app", "budget": "5", "budget_period": "month"})
        assert created.status_code in (200, 201), created.text
        key = created.json()["key"]
        r = httpx.post(gw.api + "/chat/completions", headers={"authorization": f"Bearer {key}"},
                       json={"model": "demo-small", "messages": prompt(), "max_tokens": 4})
        assert r.status_code == 200
        gw.flush()
        m = scrape(gw.base_url)
        labels = {"scope": "key", "tenant": "acme", "team": "search", "period": "month", "currency": "USD"}
        assert total(m, "gateway_budget_limit", **labels) == 5
        spent = total(m, "gateway_budget_spent", **labels)
        assert spent == pytest.approx(total(m, "gateway_cost_total", tenant="acme", team="search"), rel=1e-9)
        assert spent > 0 and total(m, "gateway_limits_admitted_total") == 1
    finally:
        gw.stop()


# --- logs, and what never leaves the process -------------------------------------------------------------


def test_no_prompt_or_key_in_logs_spans_or_metrics(tmp_path: Path) -> None:
    """Every kind of call, traced and logged at the most verbose level in both formats; then the logs, every
    exported span (names, attributes, events, status, resource) and the metrics are searched."""
    secret = "PLANTED-SECRET-PROMPT-5d1e0b never export me"
    exporter = InMemorySpanExporter()
    text, structured = io.StringIO(), io.StringIO()
    handlers = [logging.StreamHandler(text), logging.StreamHandler(structured)]
    handlers[0].setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handlers[1].setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    for h in handlers:
        root.addHandler(h)
    root.setLevel(logging.DEBUG)
    gw = InProcessGateway(tmp_path, FAST, span_exporter=exporter)
    key = gw.key
    wrong = key[:-6] + "WRONG1"
    try:
        gw.start()
        traceparent = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
        messages = [{"role": "user", "content": secret}]

        def chat(headers: dict[str, str], **extra: Any) -> httpx.Response:
            body = {"model": "auto", "messages": messages, "max_tokens": 5, **extra}
            return httpx.post(gw.api + "/chat/completions", json=body, headers={**headers, **traceparent})

        assert chat(gw.auth).status_code == 200
        assert chat(gw.auth, temperature=0).headers["x-gateway-cache"] == "miss"
        assert chat(gw.auth, temperature=0).headers["x-gateway-cache"] == "hit"
        assert chat(gw.auth, stream=True, stream_options={"include_usage": True}).status_code == 200
        assert chat(gw.auth, model="no-such-model").status_code == 404
        assert chat({"authorization": f"Bearer {wrong}"}).status_code == 401
        assert chat(gw.auth, stream_options={"include_usage": "yes"}).status_code == 400
        assert httpx.post(gw.api + "/completions", headers={**gw.auth, **traceparent},
                          json={"model": "demo-small", "prompt": secret, "max_tokens": 3}).status_code == 200
        bad = httpx.post(gw.api + "/chat/completions", headers={**gw.auth, **traceparent},
                         content=b'{"model": "demo-small", "messages": "' + secret.encode() + b'"')
        assert bad.status_code == 400
        gw.flush()
        metrics = httpx.get(gw.base_url + "/metrics").text
    finally:
        gw.stop()
        for h in handlers:
            root.removeHandler(h)
        root.setLevel(level)

    spans = exporter.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1 and len(spans) >= 8 * 4  # every call traced
    exported = [s.to_json() for s in spans]  # names, attributes, events, links, status, resource
    logged = [text.getvalue(), structured.getvalue()]
    assert "DEBUG" in logged[0]  # debug logging was really on
    assert logged[0].count("gateway.access: request_id=") == 9  # one access line per call (the 401 too)
    access = [json.loads(line) for line in logged[1].splitlines() if '"logger":"gateway.access"' in line]
    assert len(access) == 9 and {a["status"] for a in access} >= {"ok", "rejected", "refused"}
    for planted in (secret, "PLANTED-SECRET", key, wrong, key[-12:]):
        for where, blob in [("text log", logged[0]), ("JSON log", logged[1]), ("metrics", metrics),
                            *(("span", s) for s in exported)]:
            assert planted not in blob, f"{planted[:14]}... found in the {where}"


def test_json_access_line() -> None:
    record = logging.LogRecord("gateway.access", logging.INFO, __file__, 1,
                               AccessLine({"request_id": "r1", "status": "ok", "cost": "0.0000010000", "ttft_ms": 1.5}),
                               None, None)
    line = json.loads(JsonFormatter().format(record))
    assert line["logger"] == "gateway.access" and line["level"] == "info" and line["message"] == "access"
    assert (line["request_id"], line["status"], line["cost"], line["ttft_ms"]) == ("r1", "ok", "0.0000010000", 1.5)
    assert str(record.msg) == "request_id=r1 status=ok cost=0.0000010000 ttft_ms=1.5"


def test_spool_usage_counts_what_waits(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.usage() == (0, 0, 0)
    from gateway.accounting.records import UsageRecord

    def records(n: int) -> list[UsageRecord]:
        return [UsageRecord(request_id=uuid.uuid4().hex, received=1.0, finished=2.0) for _ in range(n)]

    spool.append(records(3))
    files, count, size = spool.usage()
    assert (files, count) == (1, 3) and size > 0
    spool.append(records(2))  # read incrementally: only the new bytes
    assert spool.usage()[:2] == (1, 5)
    spool.close()
    for claim in spool.claim_all():
        claim.done()
    assert spool.usage() == (0, 0, 0)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("otel_sample_ratio", "1.5", "otel_sample_ratio must be from 0 to 1"),
    ("otel_exporter", "jaeger", "otel_exporter"),
    ("otel_endpoint", "collector:4318", r"is not an http\(s\) URL"),
    ("log_format", "xml", "log_format"),
    ("metrics_auth", "key", "metrics_auth"),
])
def test_observability_settings_are_checked(key: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(env={f"GATEWAY_{key.upper()}": value})


def test_observability_settings_from_the_environment() -> None:
    s = load_settings(env={"GATEWAY_OTEL_EXPORTER": "otlp", "GATEWAY_OTEL_ENDPOINT": "http://collector:4318",
                           "GATEWAY_OTEL_SAMPLE_RATIO": "0.1", "GATEWAY_LOG_FORMAT": "json",
                           "GATEWAY_METRICS_PORT": "9464"})
    assert (s.otel_exporter, s.otel_endpoint, s.otel_sample_ratio, s.log_format, s.metrics_port) == \
        ("otlp", "http://collector:4318", 0.1, "json", 9464)
