"""The response cache (docs/cache.md): repeated deterministic requests answered from Redis,
or from this process's memory in the embedded default, instead of a GPU.

- `keys.py`: the tenant-scoped key of the canonical request after routing
- `entry.py`: the normalized answer kept, read from a JSON body or a stream, rendered as either
- `backends.py`: `CacheBackend` (the interface), `RedisBackend`, `MemoryBackend`
- `ticket.py`: one request's dealings with the cache (`Ticket`), kept on its `Outcome`
- `service.py`: `ResponseCache` (lookup, single flight, store, fail-open) and `build_cache`

Kept free of imports here: the call's `Outcome` holds a `Ticket`, and importing `ticket.py` must not load
the service (which reads outcomes).
"""
