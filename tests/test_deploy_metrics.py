"""Every metric name that deploy/ queries exists: the PromQL `expr` of every YAML file under deploy/ (alert
rules, wherever they are) and every target `expr` of every JSON file (Grafana dashboards), against the series a
running gateway serves on /metrics (and, for vLLM's `vllm:` names, a simulated engine's). A renamed metric
breaks this test rather than an alert that can no longer fire."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway_process import GatewayProcess

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
# Series Prometheus makes itself: per scrape target, and for alerts.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
                     "scrape_series_added", "ALERTS", "ALERTS_FOR_STATE"}
# Words of PromQL that look like names: operators, modifiers, and number literals.
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
            "start", "end", "inf", "nan", "Inf", "NaN"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' r"|'(?:[^'\\]|\\.)*'" r"|`[^`]*`")
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NAME = re.compile(r"(?<![\w:.])[A-Za-z_:][A-Za-z0-9_:]*(?![\w:])")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are neither functions (followed by `(`),
    label names (in `{...}` matchers or by/without/on/ignoring/group_* lists), keywords nor durations."""
    text = _STRING.sub('""', expr)
    text = _GRAFANA_VARIABLE.sub("1", text)
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # ranges and subqueries
    text = _LABEL_LIST.sub(" ", text)
    text = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", text)
    text = re.sub(r"@\s*(?:start|end)\s*\(\s*\)|@\s*[0-9.]+", " ", text)
    text = re.sub(r"(?<![\w:])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)", " ", text)
    names = set()
    for m in _NAME.finditer(text):
        if m.group(0) in KEYWORDS or re.match(r"\s*\(", text[m.end():]):
            continue
        names.add(m.group(0))
    return names


def _exprs(node: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield where, value
            else:
                yield from _exprs(value, where)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs(item, where)


def deploy_expressions() -> list[tuple[str, str]]:
    """(file, expr) of every `expr` under deploy/: YAML documents (alert and recording rules in any shape:
    Prometheus rule files, PrometheusRule objects) and JSON files (dashboard targets)."""
    found: list[tuple[str, str]] = []
    for path in sorted(DEPLOY.rglob("*")):
        rel = str(path.relative_to(ROOT))
        if path.suffix in (".yaml", ".yml"):
            text = path.read_text()
            try:
                docs = list(yaml.safe_load_all(text))
            except yaml.YAMLError as exc:  # a template: only fatal when it holds expressions this cannot read
                assert "expr:" not in text, f"{rel}: not YAML, and it has PromQL expressions: {exc}"
                continue
            for doc in docs:
                found += _exprs(doc, rel)
        elif path.suffix == ".json":
            found += _exprs(json.loads(path.read_text()), rel)
    return found


def served_series(text: str) -> set[str]:
    """The series names Prometheus stores from an exposition: counters with `_total`, histograms' `_bucket`,
    `_sum`, `_count`, and each sample's own name (families without samples yet included)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(s.name for s in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type in ("histogram", "gaugehistogram"):
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        elif family.type == "summary":
            names.update((family.name, family.name + "_sum", family.name + "_count"))
        else:
            names.add(family.name)
    return names


@pytest.mark.pure
@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (model, status) (rate(gateway_requests_total{code=~"5..", model!="x"}[5m]))',
     {"gateway_requests_total"}),
    ("histogram_quantile(0.95, sum by (le) (rate(gateway_request_duration_seconds_bucket[$__rate_interval])))",
     {"gateway_request_duration_seconds_bucket"}),
    ("max without (replica) (gateway_budget_spent) / on (tenant) group_left(team) gateway_budget_limit > 0.9",
     {"gateway_budget_spent", "gateway_budget_limit"}),
    ("sum(gateway_replica_healthy) == bool 0 or absent(up{job=\"gateway\"}) unless vector(1)",
     {"gateway_replica_healthy", "up"}),
    ("deriv(gateway_recorder_spool_records[15m:1m] offset 5m) > 1e-3 and gateway_cost_total @ end()",
     {"gateway_recorder_spool_records", "gateway_cost_total"}),
    ('label_replace(vllm:num_requests_running, "x", "$1", "instance", "(.*)") * -Inf', {"vllm:num_requests_running"}),
    ("sum by(tenant)(increase(gateway_cost_total[$__range])) / ${budget_limit:raw}", {"gateway_cost_total"}),
])
def test_the_extractor_finds_metric_names_only(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


@pytest.mark.pure
def test_served_series_follow_prometheus_naming() -> None:
    text = (
        "# HELP a_total x\n# TYPE a_total counter\na_total{k=\"v\"} 1.0\n"
        "# HELP b x\n# TYPE b counter\n"
        "# HELP c_seconds x\n# TYPE c_seconds histogram\n"
        "# HELP d x\n# TYPE d gauge\n"
    )
    assert served_series(text) == {"a_total", "b_total", "c_seconds_bucket", "c_seconds_sum", "c_seconds_count", "d"}


@pytest.mark.pure
def test_deploy_has_alert_rules_and_dashboards_to_check() -> None:
    files = {f for f, _ in deploy_expressions()}
    assert "deploy/compose/grafana/dashboards/gateway.json" in files
    assert "deploy/compose/prometheus/alerts.yaml" in files, "the compose stack's alert rules have no expr"


def test_every_metric_deploy_queries_is_served(gateway: GatewayProcess) -> None:
    # Calls that leave labelled series: a miss, a cache hit, a stream, a refused key.
    body = {"model": "auto", "messages": [{"role": "user", "content": "deploy metrics"}], "max_tokens": 4,
            "temperature": 0}
    for stream in (False, False, True):
        r = httpx.post(gateway.api + "/chat/completions", headers=gateway.auth, json={**body, "stream": stream},
                       timeout=30)
        assert r.status_code == 200, r.text
    assert httpx.post(gateway.api + "/chat/completions", json=body, timeout=30).status_code == 401
    exposition = httpx.get(gateway.base_url + "/metrics", headers=gateway.auth, timeout=10).text
    known = served_series(exposition) | PROMETHEUS_SERIES
    assert "gateway_requests_total" in known and "gateway_budget_spent" in known
    replicas = re.findall(r'^gateway_replica_healthy\{[^}]*replica="([^"]+)"', exposition, re.M)
    assert replicas, "the gateway shows no replica"
    known |= served_series(httpx.get(replicas[0] + "/metrics", timeout=10).text)
    assert "vllm:num_requests_running" in known

    expressions = deploy_expressions()
    assert expressions
    missing = sorted({(where, name, expr) for where, expr in expressions for name in promql_metric_names(expr)
                      if name not in known})
    assert not missing, "metrics queried under deploy/ that no gateway serves:\n" + "\n".join(
        f"  {where}: {name} in `{expr}`" for where, name, expr in missing)
