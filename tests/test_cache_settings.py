"""The cache's settings: defaults, environment, refusals, and which backend they give."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from gateway.cache.backends import MemoryBackend, RedisBackend
from gateway.cache.service import build_cache
from gateway.settings import SettingsError, load_settings

pytestmark = pytest.mark.pure


def test_defaults_and_environment() -> None:
    s = load_settings(env={})
    assert s.cache_enabled and s.cache_max_entry_bytes == 1_000_000 and s.cache_key_prefix == "gateway:cache:"
    s = load_settings(env={"GATEWAY_CACHE_ENABLED": "false", "GATEWAY_CACHE_WAIT_S": "2.5"})
    assert s.cache_enabled is False and s.cache_wait_s == 2.5


@pytest.mark.parametrize(("key", "value"), [
    ("cache_lock_ttl_s", "0"), ("cache_wait_s", "-1"), ("cache_max_entry_bytes", "0"),
    ("cache_memory_max_entries", "0"), ("cache_memory_max_bytes", "0"), ("cache_retry_s", "-1"),
])
def test_bad_values_are_refused_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(SettingsError, match=key):
        load_settings(env={f"GATEWAY_{key.upper()}": value})


async def test_the_backend_follows_redis_url_and_cache_enabled() -> None:
    memory = build_cache(load_settings(env={}), None)
    assert isinstance(memory.backend, MemoryBackend) and memory.status()["backend"] == "memory"
    redis = Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        shared = build_cache(load_settings(env={"GATEWAY_REDIS_URL": "redis://127.0.0.1:6379/0"}), redis)
        assert isinstance(shared.backend, RedisBackend) and shared.status()["backend"] == "redis"
    finally:
        await redis.aclose()
    off = build_cache(load_settings(env={"GATEWAY_CACHE_ENABLED": "0"}), None)
    assert off.backend is None and off.status()["backend"] == "off" and off.status()["ok"] is True
