"""deploy/compose/: the Compose file against the Compose Specification's JSON schema (offline: the copy that
check-jsonschema ships), and what the schema cannot see: services, files, variables, the gateways' settings,
Prometheus, HAProxy, Grafana and the collector agreeing with each other."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from gateway.settings import Settings, load_settings
from router.policy import load_policy_set

pytestmark = pytest.mark.pure

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
GATEWAY_IMAGE = "llm-gateway:latest"
# Official images whose own USER is not root (the others set `user:` here).
NON_ROOT_IMAGES = ("haproxy:", "prom/prometheus:", "grafana/grafana:", "otel/opentelemetry-collector:")
# vLLM's image runs as root: its model cache volume and the NVIDIA runtime expect it.
ROOT_ALLOWED = ("vllm/vllm-openai:",)
WORKER_MODES = ("cpu", "gpu")  # the profiles, which also pick the gateways' settings file

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$\$")


class MissingVariable(Exception):
    pass


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}` and `$$`."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        value = env.get(name)
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op in ("?", ":?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        if op in ("-", ":-") and unset:
            return arg
        return value or ""

    return _VAR.sub(one, text)


def variables(text: str) -> set[str]:
    return {m.group(1) for m in _VAR.finditer(text) if m.group(1)}


def read_env_example() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: `{line}` is not NAME=VALUE"
            env[name.strip()] = value.strip()
    return env


def example_env(**extra: str) -> dict[str, str]:
    """.env.example with its empty secrets filled in, as the documented command fills them."""
    env = {k: (v or f"test-{k.lower()}") for k, v in read_env_example().items()}
    env.update(extra)
    return env


def load_compose(env: Mapping[str, str]) -> dict[str, Any]:
    data = yaml.safe_load(interpolate(COMPOSE_FILE.read_text(), env))
    assert isinstance(data, dict)
    return data


def compose_schema() -> dict[str, Any]:
    schema = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    loaded = json.loads(schema.read_text())
    assert isinstance(loaded, dict)
    return loaded


def schema_errors(data: Mapping[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(compose_schema(),
                                                format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator.iter_errors(data)]


@pytest.fixture(scope="module", params=WORKER_MODES)
def compose(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load_compose(example_env(COMPOSE_PROFILES=request.param))


def services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def gateway_services(compose: Mapping[str, Any]) -> list[str]:
    return sorted(n for n, s in services(compose).items() if s.get("command", [None])[0] == "serve")


def binds(service: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(source, target) of the service's volumes given in the short syntax."""
    for v in service.get("volumes", []):
        source, _, rest = v.partition(":")
        yield source, rest.split(":")[0]


def mounted_file(service: Mapping[str, Any], target: str) -> Path:
    for source, tgt in binds(service):
        if tgt == target:
            return (COMPOSE_DIR / source).resolve()
    raise AssertionError(f"nothing is mounted at {target}")


def test_the_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    assert schema_errors(compose) == []


def test_the_schema_check_refuses_a_broken_file() -> None:
    data = load_compose(example_env())
    broken = copy.deepcopy(data)
    broken["services"]["haproxy"]["ports"] = 8080
    broken["services"]["redis"]["healthcheck"]["interval_seconds"] = 5
    del broken["services"]["grafana"]["image"]
    broken["services"]["grafana"]["imag"] = "grafana/grafana:12.1.0"
    errors = schema_errors(broken)
    assert any(e.startswith("services/haproxy/ports") for e in errors), errors
    assert any("interval_seconds" in e for e in errors), errors
    assert any("imag" in e for e in errors), errors


def test_every_variable_is_in_the_env_example_and_the_secrets_are_required() -> None:
    text = COMPOSE_FILE.read_text()
    example = read_env_example()
    assert variables(text) - set(example) == set(), "variables of compose.yaml missing from .env.example"
    # The secrets have no default: an unset one stops Compose with a message naming the .env file.
    for secret in ("POSTGRES_PASSWORD", "GATEWAY_KEY_HASH_SECRET", "GRAFANA_ADMIN_PASSWORD"):
        assert example[secret] == "", f"{secret}: .env.example must not hold a value"
        with pytest.raises(MissingVariable, match=secret):
            load_compose({k: v for k, v in example_env().items() if k != secret})
    assert "/deploy/compose/.env" in (ROOT / ".gitignore").read_text().splitlines()


def test_dependencies_and_named_volumes_exist(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    declared_volumes = set(compose.get("volumes", {}))
    used_volumes: set[str] = set()
    declared_secrets = set(compose.get("secrets", {}))
    for name, svc in svcs.items():
        for dep in svc.get("depends_on", {}):
            assert dep in svcs, f"{name} depends on unknown service {dep}"
        for source, _ in binds(svc):
            if not source.startswith((".", "/")):
                used_volumes.add(source)
        for secret in svc.get("secrets", []):
            assert (secret if isinstance(secret, str) else secret["source"]) in declared_secrets
    assert used_volumes == declared_volumes


def test_every_referenced_file_exists(compose: dict[str, Any]) -> None:
    for name, svc in services(compose).items():
        for source, _ in binds(svc):
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source} does not exist"
        if "build" in svc:
            context = (COMPOSE_DIR / svc["build"]["context"]).resolve()
            assert context == ROOT
            assert (context / svc["build"]["dockerfile"]).is_file()


def test_images_are_pinned_and_containers_hardened(compose: dict[str, Any]) -> None:
    for name, svc in services(compose).items():
        image = svc["image"]
        if image == GATEWAY_IMAGE:
            assert "build" in svc, f"{name}: the gateway's image is built, never pulled"
        else:
            tag = image.rpartition(":")[2]
            assert ":" in image and tag not in ("latest", "") and re.search(r"\d", tag), f"{name}: {image} unpinned"
        assert svc.get("read_only") is True, f"{name}: root filesystem not read-only"
        assert "/tmp" in svc.get("tmpfs", []), f"{name}: no tmpfs /tmp"
        user = str(svc.get("user", ""))
        if user:
            assert user.split(":")[0] not in ("0", "root"), f"{name}: runs as root"
        else:
            assert image.startswith(NON_ROOT_IMAGES + ROOT_ALLOWED), f"{name}: no non-root user"
        for key in svc.get("environment", {}):
            if any(word in key for word in ("SECRET", "PASSWORD", "TOKEN")) or key == "GATEWAY_DATABASE_URL":
                raw = COMPOSE_FILE.read_text()
                assert re.search(rf"{key}: .*\$\{{", raw), f"{name}: {key} is not taken from .env"


def test_gateways_are_migrated_first_and_share_the_stack(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    gateways = gateway_services(compose)
    assert len(gateways) == 2
    assert svcs["migrate"]["command"] == ["db", "upgrade"]
    assert svcs["migrate"]["restart"] == "no"
    assert svcs["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert svcs["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    assert svcs["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert any(t == "/var/lib/postgresql/data" and not s.startswith(".") for s, t in binds(svcs["postgres"]))
    states = set()
    for name in gateways:
        svc = svcs[name]
        assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        env = svc["environment"]
        assert env["GATEWAY_DATABASE_URL"].startswith("postgresql://gateway:")
        assert env["GATEWAY_REDIS_URL"] == "redis://redis:6379/0"
        assert env["GATEWAY_OTEL_EXPORTER"] == "otlp"
        assert env["GATEWAY_OTEL_ENDPOINT"] == "http://otel-collector:4318"
        # Each replica has its own state volume: the accounting journal and spool are per process.
        state = [s for s, t in binds(svc) if t == "/var/lib/gateway"]
        assert len(state) == 1 and not state[0].startswith(".")
        states.add(state[0])
    assert len(states) == len(gateways)


def gateway_settings(compose: dict[str, Any], name: str) -> Settings:
    svc = services(compose)[name]
    env = {k: str(v) for k, v in svc["environment"].items() if k != "GATEWAY_CONFIG"}
    return load_settings(mounted_file(svc, "/etc/gateway/gateway.yaml"), env=env)


@pytest.mark.parametrize("mode", WORKER_MODES)
def test_the_gateway_settings_load_and_name_workers_of_the_stack(mode: str) -> None:
    env = example_env(COMPOSE_PROFILES=mode)
    compose = load_compose(env)
    svcs = services(compose)
    assert mounted_file(svcs["gateway-1"], "/etc/gateway/gateway.yaml").name == f"gateway.{mode}.yaml"
    settings = gateway_settings(compose, "gateway-1")
    assert settings.database_url is not None and settings.database_url.endswith("@postgres:5432/gateway")
    assert settings.key_hash_secret == env["GATEWAY_KEY_HASH_SECRET"]
    assert settings.otel_exporter == "otlp"
    assert settings.state_dir == "/var/lib/gateway"
    assert settings.port == 8080
    workers = {n: s for n, s in svcs.items() if s["image"] != GATEWAY_IMAGE or s["command"][0] == "sim"}
    # Each profile's settings name only the workers that profile starts.
    profile = [mode]
    catalogue = load_policy_set(ROOT / "policies").models
    for pool in settings.pools:
        assert pool.launch is None, "the stack's workers are containers, never launched by a gateway"
        assert catalogue.get(pool.model) is not None and catalogue[pool.model].pool == pool.name
        for url in pool.replicas:
            m = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", url)
            assert m, url
            host, port = m.group(1), m.group(2)
            assert host in workers, f"{url}: no such service"
            worker = workers[host]
            assert worker.get("profiles", []) == profile, f"{url}: {host} is not started in mode {mode}"
            command = worker["command"]
            assert command[command.index("--port") + 1] == port
            served = command[command.index("--model" if "sim" in command else "--served-model-name") + 1]
            assert served == pool.model, f"{host} serves {served}, the pool expects {pool.model}"
    assert settings == gateway_settings(compose, "gateway-2")


def test_gpu_workers_reserve_nvidia_gpus_and_report_health() -> None:
    svcs = services(load_compose(example_env(COMPOSE_PROFILES="gpu")))
    vllm = {n: s for n, s in svcs.items() if s["image"].startswith("vllm/vllm-openai:")}
    assert sorted(vllm) == ["vllm-large", "vllm-small"]
    for name, svc in vllm.items():
        assert svc["profiles"] == ["gpu"]
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert "/health" in " ".join(svc["healthcheck"]["test"])
        assert any(t == "/root/.cache" and not s.startswith(".") for s, t in binds(svc)), f"{name}: no model cache"
    assert {s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"][0] for s in vllm.values()} == \
        {"0", "1"}


def test_prometheus_scrapes_every_gateway_and_loads_the_alerts(compose: dict[str, Any]) -> None:
    svc = services(compose)["prometheus"]
    config = yaml.safe_load(mounted_file(svc, "/etc/prometheus/prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "gateway"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert sorted(targets) == [f"{g}:8080" for g in gateway_services(compose)]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert config["rule_files"] == ["/etc/prometheus/alerts.yaml"]
    alerts = mounted_file(svc, "/etc/prometheus/alerts.yaml")
    assert alerts == COMPOSE_DIR / "prometheus" / "alerts.yaml"
    assert isinstance(yaml.safe_load(alerts.read_text()).get("groups"), list)
    (workers,) = [j for j in config["scrape_configs"] if j["job_name"] == "workers"]
    names = {n for sd in workers["dns_sd_configs"] for n in sd["names"]}
    assert names == {n for n, s in services(compose).items() if s.get("command", [""])[0] == "sim"
                     or s["image"].startswith("vllm/")}


def test_haproxy_balances_both_gateways_by_readiness(compose: dict[str, Any]) -> None:
    svc = services(compose)["haproxy"]
    cfg = mounted_file(svc, "/usr/local/etc/haproxy/haproxy.cfg")
    lines = [ln.split("#")[0].split() for ln in cfg.read_text().splitlines()]
    servers = sorted((ln[1], ln[2]) for ln in lines if ln and ln[0] == "server")
    assert servers == [(g, f"{g}:8080") for g in gateway_services(compose)]
    assert ["http-check", "send", "meth", "GET", "uri", "/readyz"] in lines
    assert ["http-check", "expect", "status", "200"] in lines
    default_server = next(ln for ln in lines if ln and ln[0] == "default-server")
    assert "check" in default_server
    assert not any(ln and ln[0] == "compression" for ln in lines), "compression holds streamed bytes back"
    timeouts = {ln[1]: ln[2] for ln in lines if len(ln) == 3 and ln[0] == "timeout"}
    assert int(timeouts["server"].rstrip("s")) > 300, "a stream may be silent for upstream_timeout_s (300 s)"
    assert svc["ports"] == ["8080:8080"]
    if shutil.which("haproxy"):
        out = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_provisions_the_datasource_and_the_dashboard(compose: dict[str, Any]) -> None:
    svc = services(compose)["grafana"]
    provisioning = mounted_file(svc, "/etc/grafana/provisioning")
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "gateway.yaml").read_text())["providers"]
    dashboards = mounted_file(svc, provider["options"]["path"])
    assert dashboards == COMPOSE_DIR / "grafana" / "dashboards"
    dashboard = json.loads((dashboards / "gateway.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for metric in ("gateway_requests_total", "gateway_request_duration_seconds_bucket", "gateway_usage_tokens_total",
                   "gateway_cost_total", "gateway_savings_total", "gateway_cache_lookups_total",
                   "gateway_replica_healthy", "gateway_recorder_spool_records", "gateway_budget_spent"):
        assert metric in exprs, f"the dashboard shows no {metric}"


def test_the_collector_takes_otlp_http_and_prints_the_traces(compose: dict[str, Any]) -> None:
    svc = services(compose)["otel-collector"]
    config = yaml.safe_load(mounted_file(svc, "/etc/otelcol/config.yaml").read_text())
    assert svc["command"] == ["--config=/etc/otelcol/config.yaml"]
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "0.0.0.0:4318"
    traces = config["service"]["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"] and traces["exporters"] == ["debug"]
    for kind in ("receivers", "processors", "exporters"):
        assert set(traces.get(kind, [])) <= set(config[kind])
