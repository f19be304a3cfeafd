"""Helpers for tests that drive a running gateway with keys (no tests here): `gateway keys` and
`gateway report` run as an operator runs them, in the gateway's working directory, with its config."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.gateway_process import GatewayProcess

GATEWAY = Path(sys.executable).parent / "gateway"


def workdir(gw: GatewayProcess) -> Path:
    return gw.log_path.parent


def cli(gw: GatewayProcess, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`gateway ARGS` beside a running gateway: same directory, same config file (if it has one)."""
    wd = workdir(gw)
    config = wd / "gateway.yaml"
    extra = ["--config", str(config)] if config.exists() else []
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    full_env.update(env or {})
    argv = [str(GATEWAY), *args[:2], *extra, *args[2:]] if args[0] == "keys" else [str(GATEWAY), *args, *extra]
    return subprocess.run(argv, cwd=wd, env=full_env, capture_output=True, text=True, timeout=120)


def new_key(gw: GatewayProcess, tenant: str = "acme", team: str = "red", role: str = "app",
            *extra: str) -> tuple[str, str]:
    """A new key made with `gateway keys create`: (the key, its id)."""
    out = cli(gw, "keys", "create", "--tenant", tenant, "--team", team, "--role", role, *extra)
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    key_id = re.search(r"created (key_[0-9a-f]+)", out.stderr)
    assert key_id is not None, out.stderr
    return key, key_id.group(1)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def report(gw: GatewayProcess, *args: str) -> dict[str, Any]:
    out = cli(gw, "report", "--format", "json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]
