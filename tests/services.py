"""The PostgreSQL and Redis the tests run against.

$TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test) and $TEST_REDIS_URL (default
redis://127.0.0.1:6379/0) name them and are read here only: tests call postgres_url() and redis_url() when they
connect. When a configured server does not answer, start_missing() starts a throwaway one from the installed
binaries, in a temporary directory on a free port, and points the variable at it, so the whole run (child
processes included) uses it; Throwaway.stop() ends it and deletes its directory. A run killed outright takes its
throwaway servers with it (Linux's parent-death signal); only their directory stays behind in the temp dir.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]
import redis
from sqlalchemy.engine import make_url

from workers.launcher import free_port

POSTGRES_ENV = "TEST_POSTGRES_URL"
REDIS_ENV = "TEST_REDIS_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_LIB = Path("/usr/lib/postgresql")  # Debian and Ubuntu keep the server binaries here, off PATH
START_TIMEOUT_S = 60.0
UNPRIVILEGED_USERS = ("postgres", "nobody")  # initdb and postgres refuse to run as root
_LIBC = ctypes.CDLL(None) if sys.platform == "linux" else None  # loaded before any fork
_PR_SET_PDEATHSIG = 1


def postgres_url() -> str:
    return os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES_URL)


def redis_url() -> str:
    return os.environ.get(REDIS_ENV, DEFAULT_REDIS_URL)


class ServiceError(Exception):
    """A server the tests need is missing and cannot be started here; the message says what to do."""


@dataclass
class Throwaway:
    """A server started for this run in place of the configured one, which did not answer (`why`)."""

    name: str
    configured: str
    why: str
    url: str
    process: subprocess.Popen[bytes]
    directory: Path
    stop_signal: signal.Signals

    def note(self) -> str:
        return f"{self.name}: nothing usable at {shown(self.configured)} ({self.why}); a throwaway one runs at " \
            f"{self.url} for this run"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def shown(url: str) -> str:
    """`url` fit for a message: its password masked."""
    password = urlsplit(url).password
    return url.replace(f":{password}@", ":***@") if password else url


def libpq_dsn(url: str) -> str:
    """A SQLAlchemy URL (`postgresql+asyncpg://...`) as asyncpg takes it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def postgres_problem(url: str) -> str | None:
    """None when PostgreSQL at `url` takes a connection, else why it does not (from synchronous code only: it
    runs an event loop of its own)."""

    async def connect() -> None:
        conn = await asyncpg.connect(libpq_dsn(url), timeout=3)
        await conn.close()

    try:
        asyncio.run(connect())
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return _reason(exc)
    return None


def redis_problem(url: str) -> str | None:
    """None when Redis at `url` answers PING, else why it does not."""
    client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
    except (OSError, redis.RedisError) as exc:
        return _reason(exc)
    finally:
        client.close()
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def postgres_bin_dir(path: str | None = None, lib: Path = POSTGRES_LIB) -> Path | None:
    """The directory holding initdb and postgres: the one on `path` (default $PATH), else the newest major
    version's under `lib`."""
    on_path = shutil.which("initdb", path=path)
    dirs = [Path(on_path).parent] if on_path else []
    dirs += sorted(lib.glob("*/bin"), key=lambda d: _version(d.parent.name), reverse=True)
    return next((d for d in dirs if all(shutil.which(n, path=str(d)) for n in ("initdb", "postgres"))), None)


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def redis_server(path: str | None = None) -> Path | None:
    found = shutil.which("redis-server", path=path)
    return Path(found) if found else None


def start_missing(path: str | None = None, postgres_lib: Path = POSTGRES_LIB) -> list[Throwaway]:
    """Leave the configured servers alone when they answer; start a throwaway one for each that does not and
    point its variable at it. Raises ServiceError, naming what to install, when a server is missing and so are
    its binaries (looked up on `path`, default $PATH, and for PostgreSQL under `postgres_lib` too)."""
    pg_why, redis_why = postgres_problem(postgres_url()), redis_problem(redis_url())
    pg_bin = postgres_bin_dir(path, postgres_lib) if pg_why else None
    redis_bin = redis_server(path) if redis_why else None
    missing: list[str] = []
    packages: list[str] = []
    if pg_why and pg_bin is None:
        missing.append(f"PostgreSQL: nothing usable at {shown(postgres_url())} (${POSTGRES_ENV}: {pg_why}), and "
                       f"no initdb and postgres, on PATH or under {postgres_lib}/*/bin, to start a throwaway one")
        packages.append("postgresql")
    if redis_why and redis_bin is None:
        missing.append(f"Redis: nothing usable at {shown(redis_url())} (${REDIS_ENV}: {redis_why}), and no "
                       "redis-server on PATH to start a throwaway one")
        packages.append("redis-server")
    if missing:
        raise ServiceError("the tests need real PostgreSQL and Redis servers:\n  " + "\n  ".join(missing) + "\n"
                           "Install what is missing (Debian/Ubuntu: sudo apt-get install " + " ".join(packages) + ") "
                           "and the tests start throwaway servers themselves, or point TEST_POSTGRES_URL and "
                           "TEST_REDIS_URL at running ones.")
    started: list[Throwaway] = []
    try:
        if pg_why and pg_bin:
            started.append(start_postgres(pg_bin, pg_why))
            os.environ[POSTGRES_ENV] = started[-1].url
        if redis_why and redis_bin:
            started.append(start_redis(redis_bin, redis_why))
            os.environ[REDIS_ENV] = started[-1].url
    except BaseException:
        stop_all(started)
        raise
    return started


def stop_all(servers: list[Throwaway]) -> None:
    for server in servers:
        server.stop()


def start_postgres(bin_dir: Path, why: str) -> Throwaway:
    """A throwaway PostgreSQL with trust auth, user `postgres` and an empty database `test`. Its data need not
    survive a crash, so it never waits for the disk."""
    uid, gid = _unprivileged()
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="gateway-test-postgres-"))
    if uid is not None and gid is not None:
        os.chown(directory, uid, gid)
    groups: list[int] | None = [] if uid is not None else None
    data = directory / "data"
    initdb = subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C",
         "--no-sync"],
        cwd=directory, user=uid, group=gid, extra_groups=groups, capture_output=True, text=True, check=False)
    if initdb.returncode:
        shutil.rmtree(directory, ignore_errors=True)
        raise ServiceError(f"initdb of a throwaway PostgreSQL failed:\n{_tail(initdb.stdout + initdb.stderr)}")
    with (directory / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(directory),
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
            cwd=directory, user=uid, group=gid, extra_groups=groups, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent)
    server = Throwaway("PostgreSQL", postgres_url(), why, f"postgresql://postgres@127.0.0.1:{port}/test", process,
                       directory, signal.SIGINT)  # SIGINT: fast shutdown, not waiting for clients to leave
    admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    _wait_until_up(server, lambda: postgres_problem(admin))
    try:
        asyncio.run(_create_database(admin, "test"))
    except BaseException:
        server.stop()
        raise
    return server


async def _create_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def start_redis(binary: Path, why: str) -> Throwaway:
    """A throwaway Redis that never writes to disk."""
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="gateway-test-redis-"))
    with (directory / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "",
             "--appendonly", "no", "--daemonize", "no"],
            cwd=directory, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    server = Throwaway("Redis", redis_url(), why, f"redis://127.0.0.1:{port}/0", process, directory, signal.SIGTERM)
    _wait_until_up(server, lambda: redis_problem(server.url))
    return server


def _unprivileged() -> tuple[int | None, int | None]:
    """The (uid, gid) PostgreSQL runs as: (None, None), the current user's, unless that is root."""
    if os.geteuid() != 0:
        return None, None
    for name in UNPRIVILEGED_USERS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise ServiceError(f"PostgreSQL refuses to run as root, and none of the users {', '.join(UNPRIVILEGED_USERS)} "
                       "exists to run a throwaway one as")


def _die_with_parent() -> None:
    """In the server's process before exec: it gets SIGKILL when the test run dies."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _wait_until_up(server: Throwaway, problem: Callable[[], str | None]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while (why := problem()) is not None:
        if server.process.poll() is not None or time.monotonic() > deadline:
            log = _tail((server.directory / "server.log").read_text(errors="replace"))
            server.stop()
            raise ServiceError(f"the throwaway {server.name} did not start ({why}):\n{log}")
        time.sleep(0.1)


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
