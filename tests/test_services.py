"""tests/services.py: the configured PostgreSQL and Redis when they answer, else throwaway ones started from the
installed binaries (real ones: redis-server, and PostgreSQL's initdb and postgres), gone after the run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio

from tests.services import (
    POSTGRES_ENV,
    REDIS_ENV,
    ServiceError,
    libpq_dsn,
    postgres_bin_dir,
    postgres_problem,
    postgres_url,
    redis_problem,
    redis_server,
    redis_url,
    start_missing,
    stop_all,
)
from workers.launcher import free_port

ROOT = Path(__file__).resolve().parent.parent


def closed_urls() -> dict[str, str]:
    """Both variables on ports where nothing listens."""
    return {POSTGRES_ENV: f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/test",
            REDIS_ENV: f"redis://127.0.0.1:{free_port()}/0"}


def require_binaries() -> None:
    if postgres_bin_dir() is None or redis_server() is None:
        pytest.skip("needs redis-server and PostgreSQL's initdb and postgres installed, to start throwaway servers")


def test_the_configured_servers_are_used_when_they_answer() -> None:
    before = postgres_url(), redis_url()
    assert start_missing() == []
    assert (postgres_url(), redis_url()) == before


def test_a_missing_server_gets_a_throwaway_one_that_is_gone_afterwards(monkeypatch: pytest.MonkeyPatch) -> None:
    require_binaries()
    for env, url in closed_urls().items():
        monkeypatch.setenv(env, url)
    started = start_missing()
    try:
        assert [s.name for s in started] == ["PostgreSQL", "Redis"]
        assert (postgres_url(), redis_url()) == (started[0].url, started[1].url)
        assert postgres_problem(postgres_url()) is None and redis_problem(redis_url()) is None
        assert all(s.directory.is_dir() and s.process.poll() is None for s in started)
        assert "s3cret" not in started[0].note() and "***" in started[0].note()
        if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as an unprivileged user
            assert started[0].directory.stat().st_uid != 0
    finally:
        stop_all(started)
    assert all(s.process.returncode is not None and not s.directory.exists() for s in started)
    assert postgres_problem(started[0].url) is not None and redis_problem(started[1].url) is not None


def test_missing_servers_and_binaries_say_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for env, url in closed_urls().items():
        monkeypatch.setenv(env, url)
    with pytest.raises(ServiceError) as raised:
        start_missing(path=str(tmp_path), postgres_lib=tmp_path)
    message = str(raised.value)
    assert "apt-get install postgresql redis-server" in message
    assert "TEST_POSTGRES_URL" in message and "TEST_REDIS_URL" in message
    assert "s3cret" not in message


@pytest.mark.pure
def test_postgres_binaries_come_from_path_else_the_newest_major_version(tmp_path: Path) -> None:
    for version, names in {"9.6": ("initdb", "postgres"), "15": ("initdb", "postgres"), "16": ("initdb",)}.items():
        for name in names:
            exe = tmp_path / "lib" / version / "bin" / name
            exe.parent.mkdir(parents=True, exist_ok=True)
            exe.write_text("#!/bin/sh\n")
            exe.chmod(0o755)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert postgres_bin_dir(path=str(empty), lib=tmp_path / "lib") == tmp_path / "lib" / "15" / "bin"
    on_path = tmp_path / "lib" / "9.6" / "bin"
    assert postgres_bin_dir(path=str(on_path), lib=tmp_path / "lib") == on_path
    assert postgres_bin_dir(path=str(empty), lib=empty) is None


async def test_the_suite_reaches_both_servers(pg_url: str, aredis: redis.asyncio.Redis) -> None:
    """Run by the next test in a pytest of its own, on throwaway servers."""
    conn = await asyncpg.connect(libpq_dsn(pg_url), timeout=10)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    assert await aredis.ping()


def test_a_run_on_missing_servers_starts_and_removes_throwaway_ones() -> None:
    require_binaries()
    base = Path(tempfile.mkdtemp(prefix="services-test-"))
    base.chmod(0o755)  # PostgreSQL's unprivileged user reaches its directory inside
    try:
        env = {**os.environ, **closed_urls(), "TMPDIR": str(base)}
        done = run_pytest("tests/test_services.py::test_the_suite_reaches_both_servers", env)
        assert done.returncode == 0, done.stdout + done.stderr
        notes = [line for line in done.stdout.splitlines() if "a throwaway one runs at" in line]
        assert [n.split(":")[0] for n in notes] == ["PostgreSQL", "Redis"], done.stdout
        assert "s3cret" not in done.stdout
        assert list(base.iterdir()) == []
        urls = [n.rsplit("runs at ", 1)[1].split()[0] for n in notes]
        assert postgres_problem(urls[0]) is not None and redis_problem(urls[1]) is not None
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.pure
def test_a_run_of_pure_tests_needs_no_server() -> None:
    env = {**os.environ, **closed_urls(), "PATH": os.path.dirname(sys.executable)}  # no redis-server: a try fails
    done = run_pytest("-m pure tests/test_breaker.py", env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "throwaway" not in done.stdout


def run_pytest(args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.split()],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
