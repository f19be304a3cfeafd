"""One settings object: embedded defaults, then an optional YAML file, then `GATEWAY_*` variables.

Parsing is strict (unknown keys are errors) and the result is immutable; a bad file fails at start
with a message naming the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from workers.config import Admission, Affinity, BreakerConfig, LaunchSpec, Runner, check_timeout
from workers.launcher import parse_port_range

CONFIG_ENV = "GATEWAY_CONFIG"
ENV_PREFIX = "GATEWAY_"


class SettingsError(Exception):
    """The configuration cannot be used; the message says which key and why."""


class PoolConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A pool of replicas serving one model: URLs of running servers and/or replicas to launch."""

    name: str
    model: str
    # What the pool's engine serves (vLLM's --runner): `pooling` for an embedding model, which chat routing never
    # chooses; launched vLLM replicas get the matching flags.
    runner: Runner = "generate"
    replicas: tuple[str, ...] = ()
    launch: LaunchSpec | None = None
    api_key: str | None = None  # sent to the replicas as a bearer token (vLLM's --api-key)
    balance: Literal["least_load", "round_robin"] = "least_load"
    prefix_affinity: Affinity | None = None
    admission: Admission | None = None
    breaker: BreakerConfig = BreakerConfig()


class ShadowSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Shadow evaluation (docs/learned-routing.md): a sample of the calls the quality predictor routed to
    a cheaper model is asked again of the reference model, off the client's path, and both answers scored."""

    sample_rate: float = 0.0  # share of eligible calls evaluated, by a hash of the request id; 0 = off
    reference_model: str | None = None  # unset: the routing decision's reference_model (the policy's)
    judge: str = "exact"  # `exact` (normalised text equality) or a catalogue model graded with the shipped prompt
    max_queue: int = 64  # pending jobs (each holds a request and an answer in memory); more are dropped
    concurrency: int = 2  # jobs running at once
    max_tokens: int = 512  # cap on the shadow call's output
    daily_budget: Decimal = Decimal(1)  # shadow + judge spend per UTC day, price catalogue's currency; 0 = none
    max_load: float = 0.8  # skip while the reference model's pool is busier than this (0 idle .. 1 full)
    key_prefix: str = "gateway:shadow:"  # with redis_url: <prefix>spend:<day>, today's spend of every process

    def check(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise msgspec.ValidationError("shadow.sample_rate must be from 0 to 1")
        if not 0.0 <= self.max_load <= 1.0:
            raise msgspec.ValidationError("shadow.max_load must be from 0 to 1")
        for name in ("max_queue", "concurrency", "max_tokens"):
            if getattr(self, name) < 1:
                raise msgspec.ValidationError(f"shadow.{name} must be >= 1")
        if not self.daily_budget.is_finite() or self.daily_budget < 0:
            raise msgspec.ValidationError("shadow.daily_budget must be an amount >= 0")
        if not self.judge.strip():
            raise msgspec.ValidationError("shadow.judge must be `exact` or the name of a catalogue model")
        if self.reference_model is not None and not self.reference_model.strip():
            raise msgspec.ValidationError("shadow.reference_model must name a catalogue model (or be left out)")

    @property
    def enabled(self) -> bool:
        return self.sample_rate > 0


def _embedded_pools() -> tuple[PoolConfig, ...]:
    # Two simulated engines of different speed, so `make run` works on a fresh machine.
    return (
        PoolConfig(
            name="small",
            model="demo-small",
            launch=LaunchSpec(args=("--ttft-ms", "20", "--output-token-ms", "5")),
        ),
        PoolConfig(
            name="large",
            model="demo-large",
            launch=LaunchSpec(args=("--ttft-ms", "60", "--output-token-ms", "15", "--max-model-len", "8192")),
        ),
    )


class Settings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8080
    # Processes serving the port (gateway serve --workers); more than one needs redis_url (shared limits, cache).
    workers: int = 1
    launch_ports: str | None = None  # "FIRST-LAST": the ports of launched replicas; unset: ports the OS picks
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    state_dir: str = ".gateway"  # logs of launched replicas, the embedded database, the accounting spool
    # Routing policies: models.yaml, classify.yaml, routing.yaml (unset: the shipped policies/).
    policies_dir: str | None = None
    max_body_bytes: int = 10_000_000
    # Client connections (docs/configuration.md#server-timeouts; gateway/server_limits.py): the headers from the
    # accept (a kept-alive connection's next request: from the previous answer, after the idle time), the whole
    # body from the end of the headers (408 past either), a kept-alive connection's wait for its next request,
    # and open connections per client address (0: no cap; behind a proxy, the proxy's address is the client's).
    client_header_timeout_s: float = 10.0
    client_body_timeout_s: float = 30.0
    client_idle_timeout_s: float = 5.0
    client_max_connections_per_address: int = 512
    upstream_connect_timeout_s: float = 3.0
    # Longest wait for the next bytes from a worker; a non-streaming answer arrives whole, so this
    # bounds its whole generation time.
    upstream_timeout_s: float = 300.0
    upstream_max_connections: int = 1024
    # Replicas tried for one call when a replica refuses the connection or fails before answering.
    upstream_attempts: int = 3
    health_interval_s: float = 2.0
    # GET /readyz is 200 while `all` pools (or, with `any`, at least one pool) have a healthy replica. Gateways that
    # share their workers (a load balancer in front) want `any`: one pool's outage must not take every gateway out.
    readiness_pools: Literal["all", "any"] = "all"
    # Accounting (docs/accounting.md). No database_url: SQLite at <state_dir>/gateway.db.
    database_url: str | None = None
    auto_migrate: bool | None = None  # migrate at start; unset: only the embedded SQLite
    prices_file: str | None = None  # unset: the shipped policies/prices.yaml
    # Records held in memory (~2 KB each) while the database is slow or down; beyond, they go to the spool.
    recorder_queue_max: int = 10_000
    recorder_batch_max: int = 1000  # records per INSERT
    recorder_flush_interval_s: float = 0.25  # longest a record waits in memory
    recorder_retry_interval_s: float = 2.0  # how often an unreachable database is tried again
    # The longest a batch's write may take: past it, a hung database is treated as a refusing one (the batch
    # goes to the spool, the database is tried again in recorder_retry_interval_s).
    recorder_write_timeout_s: float = 5.0
    # Shared state of several gateway processes (cache, rate limits, budgets): redis://host:6379/0.
    # Unset: in-process equivalents, for one process (the embedded default).
    redis_url: str | None = None
    redis_max_connections: int = 256  # per gateway process; a call waits up to redis_timeout_s for a free one
    # Redis answers within this or the call goes on without it (docs/configuration.md#redis): each command and
    # round trip, a new connection, the wait for a free one.
    redis_timeout_s: float = 1.0
    # The response cache (docs/cache.md): in Redis when redis_url is set, else in memory.
    cache_enabled: bool = True
    cache_max_entry_bytes: int = 1_000_000  # larger answers are not cached
    cache_memory_max_entries: int = 10_000  # the in-process cache (no redis_url): LRU beyond these
    cache_memory_max_bytes: int = 256_000_000
    cache_lock_ttl_s: float = 30.0  # single flight: a dead holder blocks identical requests at most this long
    cache_wait_s: float = 30.0  # longest an identical request waits for the holder's answer, then goes itself
    cache_retry_s: float = 1.0  # after a cache backend error, requests bypass the cache this long
    cache_key_prefix: str = "gateway:cache:"  # Redis keys: <prefix><tenant or namespace>:<sha256>
    # Keys, roles, limits and budgets (docs/keys-limits-budgets.md; gateway/auth, gateway/limits).
    auth: Literal["required", "off"] = "required"  # off: no keys, every call is tenant `default`'s
    # The development key (role admin, tenant default, team dev). Unset: generated once in <state_dir>/dev-key
    # with the embedded database, none with a configured one; "" = none.
    dev_key: str | None = None
    key_hash_secret: str | None = None  # keys are stored as HMAC-SHA256 under it; unset: <state_dir>/key-hash-secret
    auth_cache_ttl_s: float = 2.0  # how long a key lookup is reused (a revoked key stops within this)
    # The database on the request path (docs/keys-limits-budgets.md#when-the-database-is-away): a key lookup or
    # a budget counter's first read waits at most this long; then the last known keys answer (or a 503).
    database_request_timeout_s: float = 0.5
    database_retry_s: float = 1.0  # after a failed read, the request path leaves the database alone this long
    report_timeout_s: float = 30.0  # a report (API or console) waits at most this long on the database, then 503
    # The keys are re-read whole this often (the last known keys while the database is away) and kept in
    # <state_dir>/key-snapshot (HMAC-keyed, never the keys) for a restart while it is away; false: no file.
    key_reload_interval_s: float = 60.0
    key_snapshot: bool = True
    budget_soft_pct: int = 80  # spend past this % of a budget logs a warning (once per budget and period)
    budget_reservation_ttl_s: float = 3600.0  # a call's reservation is released after this if never settled
    # A budget reservation bounds the prompt by the request body's bytes plus what a chat template adds: these
    # tokens per request (per prompt of /v1/completions) and per message (docs/keys-limits-budgets.md).
    budget_template_tokens_per_request: int = 256
    budget_template_tokens_per_message: int = 8
    limits_key_prefix: str = "gateway:limits:"  # Redis keys of rate limits and budgets
    # Feedback (docs/learned-routing.md; gateway/learning/): how long after a call routed by the quality predictor
    # its features are kept for feedback (0: feedback off), and how many the in-process stash holds.
    feedback_window_s: int = 900
    feedback_stash_entries: int = 10_000  # without redis_url; beyond, the oldest go
    feedback_key_prefix: str = "gateway:feedback:"  # Redis keys: <prefix><tenant>:<request id>
    # The Responses API (docs/api.md#the-responses-api): which replica holds each response a worker keeps, for
    # this long; without redis_url, at most this many (the oldest go first).
    responses_pin_ttl_s: float = 604_800.0
    responses_pin_entries: int = 100_000
    responses_key_prefix: str = "gateway:responses:"  # Redis keys: <prefix><response id>
    # A background response is asked for every responses_poll_s (doubling, up to ten times that) until it is
    # made, for its usage; after responses_follow_max_s it is recorded as it is (at most the reservation's TTL).
    responses_poll_s: float = 1.0
    responses_follow_max_s: float = 3600.0
    # Observability (docs/observability.md; gateway/telemetry/).
    log_format: Literal["text", "json"] = "text"  # json: one JSON object per line (access lines included)
    otel_exporter: Literal["none", "otlp", "console"] = "none"  # traces: none = tracing off, no propagation
    otel_endpoint: str | None = None  # OTLP/HTTP collector, e.g. http://collector:4318 (unset: OTEL_EXPORTER_OTLP_*)
    otel_sample_ratio: float = 1.0  # requests without a sampled `traceparent` traced at this ratio (parent-based)
    otel_service_name: str = "llm-gateway"
    metrics_auth: Literal["none", "admin"] = "none"  # admin: GET /metrics needs a key of role admin
    metrics_port: int | None = None  # serve /metrics on this port (same host) instead of the API's port
    metrics_budget_refresh_s: float = 30.0  # budget gauges are re-read from the database at most this often
    # The web console (docs/console.md; gateway/console/): a session lasts this long after sign-in; its cookies
    # are marked Secure (sent over HTTPS only) when console_secure_cookies is true (behind TLS).
    console_session_ttl_s: int = 1800
    console_secure_cookies: bool = False
    shadow: ShadowSettings = ShadowSettings()
    pools: tuple[PoolConfig, ...] = ()

    def __post_init__(self) -> None:
        if not self.pools:
            msgspec.structs.force_setattr(self, "pools", _embedded_pools())
        if self.workers < 1:
            raise msgspec.ValidationError("workers must be >= 1")
        if self.workers > 1 and not self.redis_url:
            raise msgspec.ValidationError(f"workers: {self.workers} needs redis_url (GATEWAY_REDIS_URL): the processes "
                                          "must share rate limits, budgets, the cache, key revocations and feedback")
        if self.launch_ports is not None:
            try:
                first, last = parse_port_range(self.launch_ports)
            except ValueError as exc:
                raise msgspec.ValidationError(f"launch_ports: {exc}") from None
            launched = sum(p.launch.replicas for p in self.pools if p.launch is not None)
            if last - first + 1 < launched:
                raise msgspec.ValidationError(f"launch_ports {self.launch_ports} has {last - first + 1} port(s) for "
                                              f"{launched} launched replicas")
        names = [p.name for p in self.pools]
        models = [p.model for p in self.pools]
        for what, values in (("pool name", names), ("pool model", models)):
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise msgspec.ValidationError(f"duplicate {what}: {', '.join(dupes)}")
        for pool in self.pools:
            if not pool.replicas and pool.launch is None:
                raise msgspec.ValidationError(f"pool `{pool.name}` has neither replicas nor launch")
            if pool.launch is not None:
                launch = pool.launch
                if launch.replicas < 1 or launch.gpus_per_replica < 1:
                    raise msgspec.ValidationError(f"pool `{pool.name}`: launch.replicas and gpus_per_replica >= 1")
                if launch.engine != "sim" and not launch.model_path:
                    raise msgspec.ValidationError(f"pool `{pool.name}`: engine {launch.engine} needs launch.model_path")
                if launch.engine == "sim" and pool.runner == "pooling":
                    raise msgspec.ValidationError(f"pool `{pool.name}`: runner pooling needs engine vllm or vllm-cpu "
                                                  "(the simulator generates text only)")
                # A healthy replica is checked once per round (the checks' timeout plus the interval): two rounds
                # at least, or one slow round would restart it.
                least = 2 * (self.health_interval_s + check_timeout(self.health_interval_s))
                if 0 < launch.unhealthy_restart_s < least:
                    raise msgspec.ValidationError(f"pool `{pool.name}`: launch.unhealthy_restart_s must be 0 (off) or "
                                                  f"at least {least:g} (two rounds of health checks)")
            for url in pool.replicas:
                if not url.startswith(("http://", "https://")):
                    raise msgspec.ValidationError(f"pool `{pool.name}`: replica `{url}` is not an http(s) URL")
        for name in ("cache_max_entry_bytes", "cache_memory_max_entries", "cache_memory_max_bytes"):
            if getattr(self, name) < 1:
                raise msgspec.ValidationError(f"{name} must be >= 1")
        for name in ("cache_lock_ttl_s", "cache_wait_s"):
            if getattr(self, name) <= 0:
                raise msgspec.ValidationError(f"{name} must be > 0")
        if self.cache_retry_s < 0:
            raise msgspec.ValidationError("cache_retry_s must be >= 0")
        if self.redis_timeout_s <= 0:
            raise msgspec.ValidationError("redis_timeout_s must be > 0")
        for name in ("client_header_timeout_s", "client_body_timeout_s", "client_idle_timeout_s"):
            if getattr(self, name) <= 0:
                raise msgspec.ValidationError(f"{name} must be > 0")
        if self.client_max_connections_per_address < 0:
            raise msgspec.ValidationError("client_max_connections_per_address must be >= 0 (0: no cap)")
        for name in ("database_request_timeout_s", "database_retry_s", "key_reload_interval_s", "report_timeout_s"):
            if getattr(self, name) <= 0:
                raise msgspec.ValidationError(f"{name} must be > 0")
        if self.upstream_attempts < 1:
            raise msgspec.ValidationError("upstream_attempts must be >= 1")
        if self.recorder_write_timeout_s <= 0:
            raise msgspec.ValidationError("recorder_write_timeout_s must be > 0")
        if not 1 <= self.budget_soft_pct <= 100:
            raise msgspec.ValidationError("budget_soft_pct must be from 1 to 100")
        for name in ("auth_cache_ttl_s", "budget_template_tokens_per_request", "budget_template_tokens_per_message"):
            if getattr(self, name) < 0:
                raise msgspec.ValidationError(f"{name} must be >= 0")
        if self.console_session_ttl_s < 1:
            raise msgspec.ValidationError("console_session_ttl_s must be >= 1")
        if self.feedback_window_s < 0:
            raise msgspec.ValidationError("feedback_window_s must be >= 0")
        if self.feedback_stash_entries < 1:
            raise msgspec.ValidationError("feedback_stash_entries must be >= 1")
        if self.budget_reservation_ttl_s <= 0:
            raise msgspec.ValidationError("budget_reservation_ttl_s must be > 0")
        for name in ("responses_pin_ttl_s", "responses_poll_s", "responses_follow_max_s"):
            if getattr(self, name) <= 0:
                raise msgspec.ValidationError(f"{name} must be > 0")
        if self.responses_pin_entries < 1:
            raise msgspec.ValidationError("responses_pin_entries must be >= 1")
        if self.responses_follow_max_s > self.budget_reservation_ttl_s:
            raise msgspec.ValidationError("responses_follow_max_s must be at most budget_reservation_ttl_s (a "
                                          "background response's reservation is held while it is followed)")
        if not 0.0 <= self.otel_sample_ratio <= 1.0:
            raise msgspec.ValidationError("otel_sample_ratio must be from 0 to 1")
        if self.otel_endpoint is not None and not self.otel_endpoint.startswith(("http://", "https://")):
            raise msgspec.ValidationError(f"otel_endpoint `{self.otel_endpoint}` is not an http(s) URL")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise msgspec.ValidationError("metrics_port must be a TCP port (0-65535)")
        if self.metrics_port and self.metrics_port + self.workers - 1 > 65535:
            raise msgspec.ValidationError(f"metrics_port: the {self.workers} processes serve metrics on "
                                          f"{self.metrics_port}-{self.metrics_port + self.workers - 1}, past 65535")
        if self.metrics_budget_refresh_s < 0:
            raise msgspec.ValidationError("metrics_budget_refresh_s must be >= 0")
        self.shadow.check()


_SCALAR_FIELDS = {
    f.name for f in msgspec.structs.fields(Settings) if f.name not in ("pools", "shadow")
}


def load_settings(
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Defaults < YAML file (`config_file` or $GATEWAY_CONFIG) < GATEWAY_* variables < overrides."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    path = config_file or env.get(CONFIG_ENV)
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise SettingsError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise SettingsError(f"{path}: the top level must be a mapping of settings")
        data.update(loaded or {})
    for key, value in env.items():
        if key.startswith(ENV_PREFIX) and key != CONFIG_ENV:
            name = key[len(ENV_PREFIX) :].lower()
            if name in _SCALAR_FIELDS:
                data[name] = value
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        # strict=False lets "8081" from the environment become an int.
        return msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as exc:
        where = f" (in {path})" if path else ""
        raise SettingsError(f"invalid settings{where}: {exc}") from exc
