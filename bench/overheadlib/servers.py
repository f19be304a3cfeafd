"""The servers under test: our gateway and the LiteLLM proxy, configured as in production, and the
floors (the libraries the gateway is built on, doing nothing else)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from overheadlib.mock import Mock
from overheadlib.procs import BenchError, Child, free_port, http_get, http_post, pinned, wait_until

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
# The gateway code measured: this checkout, or another (e.g. a worktree of an earlier commit, to see what a
# change bought) run with this checkout's venv.
SOURCE = Path(os.environ.get("BENCH_GATEWAY_SRC") or ROOT).resolve()
WORK = ROOT / "bench" / ".work"  # gitignored: LiteLLM's throwaway virtual environment lives here
LITELLM_VENV = WORK / "litellm-venv"
LITELLM_KEY = "sk-bench-overhead-0123456789"  # LiteLLM's master key
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")  # keys under a per-run prefix

# The two pools. Their names and models are the shipped policies/ and prices.yaml ones, so routing and
# accounting run their production path on the shipped files with nothing bench-specific.
JSON_POOL, JSON_MODEL = "small", "demo-small"  # -> the mock's JSON port
SSE_POOL, SSE_MODEL = "large", "demo-large"  # -> the mock's SSE port


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "LITELLM_", "DATABASE_URL"))}
    env.update(extra)
    return env


def _gateway_env(**extra: str) -> dict[str, str]:
    env = _clean_env(**extra)
    if SOURCE != ROOT:  # ahead of the venv's editable install of this checkout
        env["PYTHONPATH"] = str(SOURCE)
    return env


# --- the gateway's settings ----------------------------------------------------------------------------


@dataclass
class Feature:
    """A production feature, switched on through settings when the gateway has them.

    `key` is the setting that must exist for the feature to be on; `settings` are applied with it
    (those the gateway does not know are left out). A run prints which features were on, so it never
    silently measures less than it says.
    """

    name: str
    key: str
    settings: dict[str, Any]
    note: str
    applied: bool = False


def settings_fields() -> set[str]:
    """The keys the gateway's Settings accept today (gateway/settings.py changes as features land)."""
    import msgspec

    from gateway.settings import Settings

    return {f.name for f in msgspec.structs.fields(Settings)}


def redis_reachable(url: str) -> bool:
    try:
        import redis
    except ImportError:
        return False
    try:
        client = redis.Redis.from_url(url, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def delete_redis_prefix(url: str, prefix: str) -> int:
    """Removes the run's keys (cache entries, rate-limit counters) from the shared Redis."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=30)
    removed = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                removed += int(client.unlink(*batch))
                batch = []
        if batch:
            removed += int(client.unlink(*batch))
    finally:
        client.close()
    return removed


def bench_policies(workdir: Path, cache_ttl_s: int) -> Path:
    """A copy of the shipped policies/ whose cache TTL is short: the benchmark's distinct prompts are
    stored (cache misses) at thousands per second, and Redis must not keep 10 minutes of them. What a
    call costs does not depend on the TTL."""
    dest = workdir / "policies"
    shutil.copytree(SOURCE / "policies", dest, dirs_exist_ok=True)
    routing = dest / "routing.yaml"
    data = yaml.safe_load(routing.read_text()) if routing.exists() else None
    cache = data.get("defaults", {}).get("cache") if isinstance(data, dict) else None
    if isinstance(cache, dict) and "ttl_s" in cache:
        cache["ttl_s"] = cache_ttl_s
        routing.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def features(database_url: str | None, redis_url: str | None, policies: Path, prefix: str) -> list[Feature]:
    return [
        Feature("accounting", "database_url", {"database_url": database_url} if database_url else {},
                "every call recorded, PostgreSQL" if database_url else "every call recorded, embedded SQLite"),
        Feature("routing", "policies_dir", {"policies_dir": str(policies)},
                "the shipped policies/ (classify, rules, the learned quality predictor), cache TTL 60 s"),
        Feature("cache", "cache_enabled",
                {"cache_enabled": True, "redis_url": redis_url, "cache_key_prefix": f"{prefix}cache:"},
                "Redis" if redis_url else "in-process (Redis not reachable)"),
        Feature("auth", "auth", {"auth": "required", "dev_key": "", "limits_key_prefix": f"{prefix}limits:"},
                "a key of role app created with `gateway keys create`, rpm/tpm limits"),
    ]


def gateway_config(workdir: Path, mock: Mock, database_url: str | None, redis_url: str | None, prefix: str,
                   extra: dict[str, Any]) -> tuple[dict[str, Any], list[Feature]]:
    fields = settings_fields()
    config: dict[str, Any] = {
        "host": "127.0.0.1",
        "log_level": "info",  # as deploy/gateway.example.yaml: one access line per call
        "state_dir": str(workdir / "state"),
        "default_model": JSON_MODEL,  # where `auto` goes, in gateways from before routing policies
        "pools": [
            {"name": JSON_POOL, "model": JSON_MODEL, "replicas": [mock.json_url]},
            {"name": SSE_POOL, "model": SSE_MODEL, "replicas": [mock.sse_url]},
        ],
    }
    config = {k: v for k, v in config.items() if k in fields or k == "pools"}  # settings come and go
    feats = features(database_url, redis_url, bench_policies(workdir, 60), prefix)
    for feat in feats:
        if feat.key in fields:
            config.update({k: v for k, v in feat.settings.items() if k in fields and v is not None})
            feat.applied = True
        else:
            feat.note = "not in this gateway"
    unknown = sorted(set(extra) - fields)
    if unknown:
        raise BenchError(f"--set: the gateway has no setting {', '.join(unknown)}")
    config.update(extra)
    for name, off in (("auth", config.get("auth") == "off"), ("cache", config.get("cache_enabled") is False)):
        if off:
            feat = next(f for f in feats if f.name == name)
            feat.applied, feat.note = False, "OFF (--set)"
    return config, feats


def prepare_database(admin_url: str, name: str) -> str | None:
    """A fresh PostgreSQL database for the run (dropped and created); None when PostgreSQL is not there."""
    try:
        import asyncpg
    except ImportError:
        return None

    async def go() -> None:
        conn = await asyncpg.connect(admin_url, timeout=5)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    try:
        asyncio.run(go())
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        print(f"  ! PostgreSQL at {admin_url} not usable ({type(exc).__name__}: {exc}); accounting uses SQLite")
        return None
    base = admin_url.rsplit("/", 1)[0]
    return f"{base}/{name}"


def drop_database(admin_url: str, name: str) -> None:
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(admin_url, timeout=5)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(go())


def count_records(database_url: str) -> int | None:
    import asyncpg

    async def go() -> int:
        conn = await asyncpg.connect(database_url, timeout=5)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM usage_records"))
        finally:
            await conn.close()

    try:
        return asyncio.run(go())
    except Exception:
        return None


@dataclass
class Server:
    name: str
    child: Child
    url: str
    auth: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.child.pid


def _gateway_command(args: list[str], cfg: Path, workdir: Path, what: str) -> str:
    env = _gateway_env(GATEWAY_CONFIG=str(cfg))
    done = subprocess.run([str(VENV_BIN / "gateway"), *args], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        raise BenchError(f"{what} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def start_gateway(workdir: Path, core: str, config: dict[str, Any], feats: list[Feature],
                  wrapper: tuple[str, ...] = (), ready_s: float = 90) -> Server:
    """The gateway as an operator starts it; `wrapper` runs it under another program (valgrind)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "gateway.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    on = {f.name for f in feats if f.applied}
    if "database_url" in config:  # production: `gateway db upgrade` once per release, then serve
        _gateway_command(["db", "upgrade"], cfg, workdir, "gateway db upgrade")
    key = ""
    if "auth" in on:  # production: an application's key, made by an admin with `gateway keys create`
        out = _gateway_command(["keys", "create", "--tenant", "bench", "--team", "overhead", "--role", "app",
                                "--name", "overhead-bench", "--rpm", "100000000", "--tpm", "2000000000"],
                               cfg, workdir, "gateway keys create")
        key = out.strip().splitlines()[-1].strip() if out.strip() else ""
        if not key:
            raise BenchError("gateway keys create printed no key")
    port = free_port()
    child = Child("gateway", pinned(core, [*wrapper, str(VENV_BIN / "gateway"), "serve", "--config", str(cfg),
                                           "--port", str(port)]), workdir / "gateway.log", cwd=workdir,
                  env=_gateway_env())
    server = Server("gateway", child, f"http://127.0.0.1:{port}", auth=key or LITELLM_KEY)
    wait_until("gateway /readyz", lambda: http_get(server.url + "/readyz")[0] == 200, ready_s, child)
    return server


# --- the floors: the libraries alone ------------------------------------------------------------------


FLOORS = {
    "plain": "uvicorn (uvloop, httptools) + raw ASGI: read the body, answer a fixed completion",
    "litestar": "the same answer from a Litestar @asgi route behind an app-wide guard",
    "proxy": "uvicorn + raw ASGI forwarding to the mock with aiohttp (the gateway's client settings)",
    "relay": "the same for a stream: each piece passed on as it arrives",
}


def start_floor(workdir: Path, core: str, app: str, upstream: str, wrapper: tuple[str, ...] = (),
                ready_s: float = 60, probe: bytes = b"{}") -> Server:
    """A floor app of overheadlib/floor_apps.py under uvicorn as the gateway runs it (uvloop, httptools,
    no access log), forwarding to `upstream` (the mock's chat endpoint) where it forwards at all."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = pinned(core, [*wrapper, str(VENV_BIN / "python"), "-m", "uvicorn", f"overheadlib.floor_apps:{app}",
                         "--loop", "uvloop", "--http", "httptools", "--port", str(port), "--no-access-log",
                         "--log-level", "warning"])
    env = {**_clean_env(), "PYTHONPATH": str(ROOT / "bench"), "FLOOR_UPSTREAM": upstream}
    child = Child(f"floor {app}", argv, workdir / f"floor-{app}.log", cwd=workdir, env=env)
    server = Server(f"floor {app}", child, f"http://127.0.0.1:{port}")
    wait_until(f"floor {app}", lambda: http_post(server.url + "/v1/chat/completions", probe, {})[0] == 200,
               ready_s, child)
    return server


# --- LiteLLM ---------------------------------------------------------------------------------------------


def litellm_version() -> str | None:
    py = LITELLM_VENV / "bin" / "python"
    if not py.exists():
        return None
    done = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                          capture_output=True, text=True, timeout=60)
    return done.stdout.strip() or None


def base_python(venv_bin: Path = VENV_BIN) -> str:
    """The interpreter a venv was made from (the gateway's: `make venv`'s PYTHON)."""
    done = subprocess.run([str(venv_bin / "python"), "-c", "import sys; print(sys._base_executable)"],
                          capture_output=True, text=True, timeout=60)
    return done.stdout.strip()


def ensure_litellm(refresh: bool) -> str:
    """LiteLLM (latest from PyPI) in its own throwaway venv under bench/.work; never a project dependency.
    The venv is made from the gateway's own interpreter, so that both run on the same build of Python (a
    PGO/LTO build runs Python code ~25% faster than one without: docs/performance.md)."""
    stamp = LITELLM_VENV / ".installed"
    python = base_python()
    made_from = base_python(LITELLM_VENV / "bin") if (LITELLM_VENV / "bin" / "python").exists() else None
    if stamp.exists() and not refresh and (LITELLM_VENV / "bin" / "litellm").exists() and made_from == python:
        return stamp.read_text().strip()
    print(f"  installing LiteLLM into bench/.work/litellm-venv ({python} -m venv + pip install 'litellm[proxy]') ...",
          flush=True)
    WORK.mkdir(parents=True, exist_ok=True)
    if made_from is not None and made_from != python:  # another interpreter's: made anew
        shutil.rmtree(LITELLM_VENV)
        made_from = None
    if made_from is None:
        subprocess.run([python, "-m", "venv", str(LITELLM_VENV)], check=True, timeout=300)
    pip = [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "--upgrade"]
    done = subprocess.run([*pip, "litellm[proxy]"], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        noise = "is ignored: it is neither a file nor a directory"
        err = "\n".join(ln for ln in (done.stdout + done.stderr).splitlines() if noise not in ln)
        raise BenchError(f"pip install 'litellm[proxy]' failed:\n{err[-3000:]}")
    version = litellm_version() or "?"
    stamp.write_text(version + "\n")
    return version


def litellm_config(mock: Mock) -> dict[str, Any]:
    """From LiteLLM's "Best Practices for Production" page (docs.litellm.ai/docs/proxy/prod), minus what needs
    a database or a third party (no Slack alerting, no DB: so no spend logs and no error logs to write)."""
    def model(name: str, url: str) -> dict[str, Any]:
        # hosted_vllm/: LiteLLM's provider for vLLM's OpenAI-compatible server
        return {"model_name": name, "litellm_params": {"model": f"hosted_vllm/{name}", "api_base": f"{url}/v1",
                                                       "api_key": "unused"}}

    return {
        "model_list": [model(JSON_MODEL, mock.json_url), model(SSE_MODEL, mock.sse_url)],
        "general_settings": {
            "master_key": LITELLM_KEY,
            "disable_spend_logs": True,  # no per-call writes (there is no database anyway)
            "disable_error_logs": True,
            "proxy_batch_write_at": 60,
        },
        "litellm_settings": {
            "request_timeout": 600,
            "set_verbose": False,  # no debug logging
            "json_logs": False,
        },
    }


def start_litellm(workdir: Path, core: str, mock: Mock) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "litellm.yaml"
    config = litellm_config(mock)
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    env = _clean_env(
        LITELLM_LOG="ERROR",  # production docs: no FastAPI info logs
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # no network here: use the cost map shipped in the package
        PYTHONUNBUFFERED="1",
    )
    argv = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(cfg), "--host", "127.0.0.1",
            "--port", str(port), "--num_workers", "1"]
    child = Child("litellm", pinned(core, argv), workdir / "litellm.log", cwd=workdir, env=env)
    server = Server("litellm", child, f"http://127.0.0.1:{port}", auth=LITELLM_KEY,
                    info={"config": json.loads(json.dumps(config)), "argv": argv[1:],
                          "env": {"LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}})
    wait_until("litellm /health/liveliness", lambda: http_get(server.url + "/health/liveliness")[0] == 200,
               240, child)
    return server


def python_versions() -> dict[str, str]:
    import importlib.metadata as md

    # The gateway's (and LiteLLM's) interpreter, which may not be the one running the benchmark.
    done = subprocess.run([str(VENV_BIN / "python"), "-c",
                           "import platform, sys; print(platform.python_version(), sys._base_executable)"],
                          capture_output=True, text=True, timeout=60)
    version, _, executable = done.stdout.strip().partition(" ")
    out = {"python": version or sys.version.split()[0], "python_executable": executable}
    for pkg in ("litestar", "uvicorn", "uvloop", "httptools", "httpx", "msgspec", "sqlalchemy", "asyncpg"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out
