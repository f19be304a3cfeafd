"""The response cache (README, "Response cache"): repeated deterministic requests answered from Redis,
or from this process's memory in the embedded default, instead of a GPU.

- `keys.py`: the tenant-scoped key of the canonical request after routing
- `entry.py`: the normalized answer kept, read from a JSON body or a stream, rendered as either
- `backends.py`: `CacheBackend` (the interface), `RedisBackend`, `MemoryBackend`
- `service.py`: `ResponseCache` and the per-request `Ticket` (lookup, single flight, store, fail-open)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.cache.backends import CacheBackend, MemoryBackend, RedisBackend
from gateway.cache.service import BYPASS, HEADER, CacheConfig, ResponseCache, Ticket, ask_cache

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from gateway.redis_batch import RedisBatcher
    from gateway.settings import Settings

__all__ = [
    "BYPASS", "HEADER", "CacheBackend", "CacheConfig", "MemoryBackend", "RedisBackend", "ResponseCache", "Ticket",
    "ask_cache", "build_cache",
]


def build_cache(settings: Settings, redis: Redis | None, batcher: RedisBatcher | None = None) -> ResponseCache:
    """Redis when the gateway has one (`redis_url`), else this process's memory. `batcher`: the app's
    auto-pipelining for `redis` (shared with the limits), else the backend makes its own."""
    config = CacheConfig(
        enabled=settings.cache_enabled,
        key_prefix=settings.cache_key_prefix,
        max_entry_bytes=settings.cache_max_entry_bytes,
        lock_ttl_s=settings.cache_lock_ttl_s,
        wait_s=settings.cache_wait_s,
        retry_s=settings.cache_retry_s,
    )
    backend: CacheBackend
    if redis is not None:
        backend = RedisBackend(redis, batcher)
    else:
        backend = MemoryBackend(settings.cache_memory_max_entries, settings.cache_memory_max_bytes)
    return ResponseCache(backend if settings.cache_enabled else None, config)
