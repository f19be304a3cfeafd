"""Child processes, CPU pinning and what /proc says about a process tree."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


class BenchError(RuntimeError):
    """The benchmark cannot go on (a server did not start, a response was wrong, ...)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cores() -> tuple[str, str]:
    """(server core, load core): the server alone on core 0, load generator and mock on core 1."""
    n = os.cpu_count() or 1
    return ("0", "1") if n >= 2 else ("0", "0")


class Child:
    """One child process in its own session (so its whole group can be stopped by id), output to a log."""

    registry: list[Child] = []  # noqa: RUF012 - every child ever started, for the final cleanup

    def __init__(self, name: str, argv: Sequence[str], log: Path, *, cwd: Path | None = None,
                 env: dict[str, str] | None = None, stop_signal: int = signal.SIGTERM,
                 stop_timeout: float = 20) -> None:
        self.name, self.log, self.stop_signal, self.stop_timeout = name, log, stop_signal, stop_timeout
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.proc.pid
        self.pgid = self.pid  # start_new_session: the child leads its own process group
        Child.registry.append(self)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def group_alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self) -> None:
        """Ask the group to stop, wait, then kill what is left of it; never leaves a process behind."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, self.stop_signal)
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pgid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while self.group_alive() and time.monotonic() < deadline:  # e.g. nginx workers after their master
            time.sleep(0.05)
        if self.group_alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)

    @classmethod
    def stop_all(cls) -> list[str]:
        """Stops every child still running; returns the names of groups that would not go."""
        for child in reversed(cls.registry):
            with contextlib.suppress(Exception):
                child.stop()
        return [c.name for c in cls.registry if c.group_alive()]


def pinned(core: str, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", core, *argv]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post(url: str, body: bytes, headers: dict[str, str],
              timeout: float = 30.0) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), {k.lower(): v for k, v in exc.headers.items()}


def wait_until(what: str, check: Callable[[], bool], timeout: float, child: Child | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if child is not None and not child.alive():
            raise BenchError(f"{what}: {child.name} exited with {child.proc.returncode}:\n{child.tail()}")
        try:
            if check():
                return
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            tail = f":\n{child.tail()}" if child is not None else ""
            raise BenchError(f"{what}: not ready after {timeout:.0f}s{tail}")
        time.sleep(0.2)


# --- /proc ----------------------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def cpu_ticks(pids: Sequence[int]) -> int:
    """utime + stime of each process (all its threads, live or ended), in clock ticks."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total


def rss_kb(pids: Sequence[int]) -> int:
    """VmRSS summed over the processes."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total


def process_cpu() -> dict[int, tuple[str, int, int]]:
    """{pid: (name, ppid, utime+stime ticks)} of every process on the machine."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        out[int(entry.name)] = (name, int(fields[1]), int(fields[11]) + int(fields[12]))
    return out


# Servers the gateway itself calls while it works (accounting, cache, limits): their CPU is part of the
# system under test, not another job's noise. Kernel threads (network softirqs) likewise.
HELPERS = ("postgres", "redis-server")


def other_cpu(before: dict[int, tuple[str, int, int]], after: dict[int, tuple[str, int, int]],
              exclude: set[int], exclude_names: tuple[str, ...], seconds: float) -> dict[str, float]:
    """CPU (% of one core) used meanwhile by processes other than `exclude`, by name; kernel threads as
    `[kernel]`."""
    used: dict[str, float] = {}
    for pid, (name, ppid, ticks) in after.items():
        if pid in exclude or name in exclude_names:
            continue
        delta = ticks - before[pid][2] if pid in before and before[pid][0] == name else ticks
        if delta <= 0:
            continue
        key = "[kernel]" if ppid == 2 or pid == 2 else name
        used[key] = used.get(key, 0.0) + 100 * delta / CLK_TCK / seconds
    return {k: round(v, 1) for k, v in sorted(used.items(), key=lambda kv: -kv[1]) if v >= 0.5}


def core_busy_ticks() -> dict[str, int]:
    """{"0": busy ticks, "1": ...} for each CPU from /proc/stat (everything but idle and iowait)."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *values = line.split()
            v = [int(x) for x in values]
            out[name[3:]] = sum(v[:8]) - v[3] - v[4]  # user..steal, less idle and iowait
    return out


class Sampler:
    """Samples the resident memory of a process tree on a background thread while a measurement runs."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid, self.interval = pid, interval
        self.pids = tree(pid)
        self.max_kb = rss_kb(self.pids)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.interval):
            n += 1
            if n % 10 == 0:  # a server may start or end worker processes; re-read the tree now and then
                self.pids = tree(self.pid)
            kb = rss_kb(self.pids)
            self.max_kb = max(self.max_kb, kb)
            self.samples.append((time.monotonic() - self._t0, kb))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
