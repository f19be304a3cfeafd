"""Hosts for the multi-host tests: Linux network namespaces joined by a bridge, each running real processes.

Every namespace, the bridge and the scratch directories are named with PREFIX, so a run killed outright
leaves nothing the next one cannot find and remove (`remove_stale`). One run at a time per machine holds
LOCK_PATH: the names and the subnet are fixed. Needs root (network namespaces, `runuser`), iproute2's `ip`,
and the servers each host runs; `require()` names whatever is missing.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PREFIX = "gwmh-"
BRIDGE = f"{PREFIX}br0"
SUBNET = "10.77.0"  # a /24; the root namespace is .1 on the bridge
LOCK_PATH = Path(tempfile.gettempdir()) / f"{PREFIX}lock"
_LIBC = ctypes.CDLL(None)  # loaded before any fork
_PR_SET_PDEATHSIG = 1


class Missing(Exception):
    """What this machine lacks to build the hosts; the message says what to do."""


def require(commands: Sequence[str], users: Sequence[str] = ()) -> None:
    """Raises Missing, naming each thing missing, unless this runs as root with `commands` on PATH and `users`
    known."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("root: network namespaces and veth pairs need it (CI runs `make test` as root; "
                        "run `sudo .venv/bin/pytest tests/test_multihost.py`)")
    problems += [f"`{c}` on PATH" for c in commands if shutil.which(c) is None]
    for user in users:
        try:
            pwd.getpwnam(user)
        except KeyError:
            problems.append(f"the OS user `{user}`")
    if problems:
        raise Missing("the multi-host test needs: " + "; ".join(problems) + ". `make debian-packages` (as root) "
                      "installs the Debian packages the tests use (haproxy among them); PostgreSQL and Redis "
                      "come from `apt-get install postgresql redis-server`.")


def ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def pids_in(ns: str) -> list[int]:
    return [int(p) for p in ip("netns", "pids", ns, check=False).split()]


def kill_all(ns: str, timeout_s: float = 10.0) -> None:
    """SIGKILL every process in namespace `ns` (a host losing its power), until none is left."""
    deadline = time.monotonic() + timeout_s
    while pids := pids_in(ns):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} in namespace {ns} survive SIGKILL")
        time.sleep(0.05)


def links() -> list[str]:
    """The root namespace's interfaces (a veth shows as `name@peer`)."""
    return [line.split(": ")[1].split("@")[0] for line in ip("-o", "link", "show").splitlines()]


def remove_stale() -> None:
    """Remove what a crashed run left: its namespaces (their processes first), its links, scratch dirs."""
    for ns in namespaces():
        if ns.startswith(PREFIX):
            kill_all(ns)
            ip("netns", "delete", ns)
    # A namespace's deletion frees its veth pairs asynchronously: deleting our ends frees them at once.
    for link in links():
        if link.startswith(PREFIX):
            ip("link", "delete", link, check=False)
    for stale in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def machine_lock(wait_s: float = 180.0) -> Iterator[None]:
    """One multi-host run at a time on this machine (the names and subnet are fixed)."""
    with LOCK_PATH.open("a") as f:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"another multi-host run holds {LOCK_PATH} after {wait_s:.0f}s") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process dies (kept across `ip netns exec`'s exec; a
    process that changes user loses it, and `remove_stale` finds those)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Service:
    """A process the test started on a host, and its log."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def reap(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


@dataclass
class Host:
    """One namespace on the bridge at `address`."""

    name: str
    address: str
    log_dir: Path
    services: list[Service] = field(default_factory=list)

    @property
    def ns(self) -> str:
        return PREFIX + self.name

    @property
    def veth(self) -> str:
        """Its veth's end on the bridge, in the root namespace (interface names take 15 bytes)."""
        return (PREFIX + self.name)[:15]

    def run(self, args: Sequence[str], *, user: str | None = None, check: bool = True) -> str:
        """Runs a command on this host to its end; its output."""
        done = subprocess.run(self._argv(args, user), capture_output=True, text=True, check=False)
        if check and done.returncode:
            raise RuntimeError(f"{self.name}: {' '.join(args)} exited with {done.returncode}:\n"
                               f"{done.stdout}{done.stderr}")
        return done.stdout

    def start(self, name: str, args: Sequence[str], *, user: str | None = None, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Service:
        """Starts a long-running process on this host, its output in `<log_dir>/<host>-<name>.log`."""
        log_path = self.log_dir / f"{self.name}-{name}.log"
        with log_path.open("ab") as out:
            process = subprocess.Popen(self._argv(args, user), stdout=out, stderr=subprocess.STDOUT, env=env,
                                       cwd=cwd, preexec_fn=_die_with_parent)
        service = Service(f"{self.name}/{name}", process, log_path)
        self.services.append(service)
        return service

    def kill(self) -> None:
        """kill -9 of every process on the host; its network stays (the next start finds its address)."""
        kill_all(self.ns)
        for service in self.services:
            service.reap()

    def _argv(self, args: Sequence[str], user: str | None) -> list[str]:
        as_user = ["runuser", "-u", user, "--"] if user else []
        return ["ip", "netns", "exec", self.ns, *as_user, *args]


@dataclass
class Network:
    """A bridge in the root namespace (address .1, where the test's clients run) and hosts on it."""

    log_dir: Path
    hosts: dict[str, Host] = field(default_factory=dict)

    def up(self) -> None:
        ip("link", "add", BRIDGE, "type", "bridge")
        ip("addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
        ip("link", "set", BRIDGE, "up")

    def add(self, name: str, octet: int) -> Host:
        host = Host(name, f"{SUBNET}.{octet}", self.log_dir)
        ns, outside = host.ns, host.veth
        ip("netns", "add", ns)
        self.hosts[name] = host
        ip("-n", ns, "link", "set", "lo", "up")
        ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("link", "set", outside, "master", BRIDGE)
        ip("link", "set", outside, "up")
        ip("-n", ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        return host

    def down(self) -> None:
        """Every process of every host killed, the namespaces and the bridge deleted."""
        for host in self.hosts.values():
            with contextlib.suppress(RuntimeError):
                host.kill()
            ip("link", "delete", host.veth, check=False)
            ip("netns", "delete", host.ns, check=False)
        ip("link", "delete", BRIDGE, check=False)

    def tails(self, lines: int = 40) -> str:
        parts = []
        for host in self.hosts.values():
            for service in host.services:
                parts.append(f"--- {service.name} ({service.log_path}) ---\n{service.tail(lines)}")
        return "\n".join(parts)


def wait_until(what: str, ready: Callable[[], bool], timeout_s: float, service: Service | None = None) -> None:
    """Polls `ready` until true; raises with `service`'s log tail after `timeout_s` or when it exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.HTTPError, OSError):
            if ready():
                return
        exited = service is not None and service.process.poll() is not None
        if exited or time.monotonic() > deadline:
            why = f"exited with {service.process.returncode}" if exited and service else f"not after {timeout_s}s"
            log = f":\n{service.tail()}" if service else ""
            raise RuntimeError(f"{what}: {why}{log}")
        time.sleep(0.05)


def http_ok(url: str) -> bool:
    return httpx.get(url, timeout=1, trust_env=False).status_code == 200
