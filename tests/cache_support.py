"""Shared by the cache tests: the real Redis (tests/services.py names it; the tests fail, not skip, without it),
a key prefix unique to the test run, and clean-up of every key under it."""

from __future__ import annotations

import uuid

import redis as sync_redis

from tests.services import redis_url


def require_redis() -> sync_redis.Redis:
    client = sync_redis.Redis.from_url(redis_url(), socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except sync_redis.RedisError as exc:
        raise AssertionError(
            f"the cache tests need a real Redis at {redis_url()} ({type(exc).__name__}: {exc})") from exc
    return client


def unique_prefix(what: str) -> str:
    return f"gwtest:{what}:{uuid.uuid4().hex[:12]}:"


def delete_prefix(client: sync_redis.Redis, prefix: str) -> int:
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    return len(keys)
