"""Starting the real `gateway` command for tests, as an operator would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from workers.launcher import bindable, free_port

GATEWAY_BIN = Path(sys.executable).parent / "gateway"
# The development key the test gateways run with (GATEWAY_DEV_KEY: role admin, tenant default, team dev).
DEV_KEY = "sk-gw-tests-dev-key-0123456789abcdefghijklmnopq"


@dataclass
class GatewayProcess:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    key: str | None = None  # the development key it accepts (None: the gateway chose its own, or none)

    @property
    def api(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def auth(self) -> dict[str, str]:
        """Headers that authenticate with the development key."""
        return {"authorization": f"Bearer {self.key}"} if self.key else {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_logged(self, text: str, timeout_s: float = 10.0) -> str:
        """The log once it holds `text` (AssertionError with its tail after `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while text not in (log := self.log()):
            assert time.monotonic() < deadline, f"{text!r} was never logged:\n{log[-3000:]}"
            time.sleep(0.05)
        return log

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_ports(n: int) -> int:
    """The first of `n` consecutive ports nothing listens on (per-process metrics ports, port ranges)."""
    for _ in range(100):
        first = free_port()
        if first + n - 1 <= 65535 and all(bindable(p) for p in range(first, first + n)):
            return first
    raise RuntimeError(f"no {n} consecutive free ports found")


def start_gateway(
    workdir: Path, config: dict[str, Any] | None = None, env: dict[str, str] | None = None, ready: bool = True,
    dev_key: str | None = DEV_KEY, port: int | None = None, gateway_bin: Path = GATEWAY_BIN,
) -> GatewayProcess:
    """Run `gateway serve` in `workdir` and wait until it serves (and, with `ready`, until /readyz is 200).

    The gateway accepts `dev_key` (as GATEWAY_DEV_KEY, unless `env` sets that); `GatewayProcess.key` and
    `.auth` send it. `dev_key=None` starts it as `make run` does (it makes and keeps its own key). `port`: the
    port to serve on (a restart on the same port), else a free one. `gateway_bin`: another installation's command.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [str(gateway_bin), "serve", "--port", str(port)]
    if config is not None:
        cfg = workdir / "gateway.yaml"
        cfg.write_text(yaml.safe_dump(config))
        args += ["--config", str(cfg)]
    log_path = workdir / "gateway.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    if dev_key is not None:
        full_env["GATEWAY_DEV_KEY"] = dev_key
    full_env.update(env or {})
    with log_path.open("wb") as out:
        proc = subprocess.Popen(args, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    gw = GatewayProcess(f"http://127.0.0.1:{port}", proc, log_path, full_env.get("GATEWAY_DEV_KEY") or None)
    deadline = time.monotonic() + 60
    path = "/readyz" if ready else "/healthz"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{gw.log()[-3000:]}")
        try:
            if httpx.get(gw.base_url + path, timeout=1).status_code == 200:
                return gw
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            gw.stop()
            raise RuntimeError(f"gateway not serving {path} after 60s:\n{gw.log()[-3000:]}")
        time.sleep(0.1)
