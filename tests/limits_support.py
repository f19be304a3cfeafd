"""Shared pieces of the auth and limits tests (no tests here): a real Redis with a per-test key prefix.

Redis is used for real: when it is unreachable the fixtures raise, so the tests fail loudly (they never
skip). $TEST_REDIS_URL names it (default redis://127.0.0.1:6379/0); each test gets its own key prefix,
`gwtest:<pid>:<random>:`, whose keys are deleted afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unique_prefix() -> str:
    return f"gwtest:{os.getpid()}:{uuid.uuid4().hex[:8]}:"


def require_redis() -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=3, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        raise RuntimeError(f"Redis at {REDIS_URL} is required by the limits tests: {exc}") from exc


def delete_prefix(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own in the real Redis (for gateways: `limits_key_prefix`)."""
    require_redis()
    prefix = unique_prefix()
    yield prefix
    delete_prefix(prefix)
