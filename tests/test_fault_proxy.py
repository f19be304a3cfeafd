"""The fault proxy the resilience tests put in front of PostgreSQL and Redis does what they rely on."""

from __future__ import annotations

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeout

from tests.fault_proxy import FaultProxy
from tests.services import libpq_dsn, postgres_url, redis_url


async def test_redis_through_each_mode() -> None:
    with FaultProxy.before(redis_url()) as proxy:
        client = Redis.from_url(proxy.through(redis_url()), socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            assert await client.ping() is True
            proxy.set_mode("hang")
            with pytest.raises(RedisTimeout):
                await client.ping()
            proxy.set_mode("refuse")
            with pytest.raises(RedisConnectionError):  # refused: a new connection fails at once
                await Redis.from_url(proxy.through(redis_url()), socket_connect_timeout=0.5).ping()
            proxy.set_mode("pass")
            fresh = Redis.from_url(proxy.through(redis_url()))
            assert await fresh.ping() is True
            await fresh.aclose()
        finally:
            await client.aclose()


async def test_postgres_hang_holds_a_query_until_pass() -> None:
    with FaultProxy.before(postgres_url()) as proxy:
        dsn = proxy.through(libpq_dsn(postgres_url()))
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            proxy.set_mode("hang")
            with pytest.raises(TimeoutError):
                await conn.fetchval("SELECT 2", timeout=0.5)
        finally:
            conn.terminate()
        proxy.set_mode("refuse")
        with pytest.raises(OSError):
            await asyncpg.connect(dsn, timeout=1)
        proxy.set_mode("pass")
        again = await asyncpg.connect(dsn)
        assert await again.fetchval("SELECT 3") == 3
        await again.close()
