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

from workers.launcher import free_port

GATEWAY_BIN = Path(sys.executable).parent / "gateway"


@dataclass
class GatewayProcess:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def api(self) -> str:
        return f"{self.base_url}/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_gateway(
    workdir: Path, config: dict[str, Any] | None = None, env: dict[str, str] | None = None, ready: bool = True
) -> GatewayProcess:
    """Run `gateway serve` in `workdir` and wait until it serves (and, with `ready`, until /readyz is 200)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [str(GATEWAY_BIN), "serve", "--port", str(port)]
    if config is not None:
        cfg = workdir / "gateway.yaml"
        cfg.write_text(yaml.safe_dump(config))
        args += ["--config", str(cfg)]
    log_path = workdir / "gateway.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    full_env.update(env or {})
    with log_path.open("wb") as out:
        proc = subprocess.Popen(args, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    gw = GatewayProcess(f"http://127.0.0.1:{port}", proc, log_path)
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
