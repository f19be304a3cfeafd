"""Shared pieces of the auth and limits tests (no tests here): a real Redis with a per-test key prefix.

Redis is used for real: when it is unreachable the fixtures raise, so the tests fail loudly (they never
skip). tests/services.py names it; each test gets its own key prefix,
`gwtest:<pid>:<random>:`, whose keys are deleted afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.services import redis_url


def unique_prefix() -> str:
    return f"gwtest:{os.getpid()}:{uuid.uuid4().hex[:8]}:"


def require_redis() -> None:
    try:
        redis.Redis.from_url(redis_url(), socket_timeout=3, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        raise RuntimeError(f"Redis at {redis_url()} is required by the limits tests: {exc}") from exc


def delete_prefix(prefix: str) -> None:
    client = redis.Redis.from_url(redis_url())
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
