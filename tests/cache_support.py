"""Shared by the cache tests: the real Redis (127.0.0.1:6379; the tests fail, not skip, without it),
a key prefix unique to the test run, and clean-up of every key under it."""

from __future__ import annotations

import uuid

import redis as sync_redis

REDIS_URL = "redis://127.0.0.1:6379/0"


def require_redis() -> sync_redis.Redis:
    client = sync_redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except sync_redis.RedisError as exc:
        raise AssertionError(
            f"the cache tests need a real Redis at {REDIS_URL} ({type(exc).__name__}: {exc}); start one "
            "(e.g. `redis-server --port 6379`)") from exc
    return client


def unique_prefix(what: str) -> str:
    return f"gwtest:{what}:{uuid.uuid4().hex[:12]}:"


def delete_prefix(client: sync_redis.Redis, prefix: str) -> int:
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    return len(keys)
