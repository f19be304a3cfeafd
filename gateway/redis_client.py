"""The gateway's Redis client (one connection pool per process), made so that Redis coming back is used at
once and a Redis that hangs holds no call longer than `redis_timeout_s`.

- One bound for everything: each command's reply, a new connection (its handshake included) and the wait
  for a free pooled connection. `gateway/redis_batch.py` takes the same bound for each round trip.
- A pooled connection that Redis or the network closed while it sat idle (Redis restarted, a proxy dropped
  it) is replaced when it is taken from the pool, before a command is written to it. redis-py checks
  that on checkout, except while its maintenance notifications (a Redis Enterprise feature the gateway
  does not use) are on, which they are by default: they are turned off.
- A command that fails on a connection error is sent once more, at once, on a new connection (no backoff):
  a connection can still die between the check and the command. A timeout is not retried: a Redis that
  does not answer would hold the call twice as long.

No periodic PING (`health_check_interval`): a closed connection is found by the checkout check without a
round trip, and a silent one (no FIN, no RST) makes a PING wait for the timeout exactly as the command
would. The commands sent through this pool are reads and idempotent writes, except the shadow evaluation's
INCRBY and revocations' PUBLISH, which a connection lost after Redis ran them but before it answered may
repeat once (a shadow day's spend counted twice for one call; a revocation announced twice).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError


def redis_client(url: str, timeout_s: float, max_connections: int) -> Redis:
    """A client of the Redis at `url`: at most `max_connections` connections, every wait bounded by
    `timeout_s`. A blocking pool: under a burst, a command waits briefly for a connection instead of
    failing (redis-py's default pool raises "Too many connections" past its cap)."""
    extra: dict[str, Any] = {}
    if hasattr(BlockingConnectionPool, "maint_notifications_enabled"):  # redis-py with them (8.x): off
        from redis.maint_notifications import MaintNotificationsConfig

        extra["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout_s, socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 1, (RedisConnectionError,)), **extra,
    )
    return Redis(connection_pool=pool)
