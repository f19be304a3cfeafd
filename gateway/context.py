"""What the handlers need, created once by the app's lifespan and handed to them through app state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from gateway.accounting import Accounting
from gateway.auth.service import Auth
from gateway.cache import ResponseCache
from gateway.learning.shadow import Shadow
from gateway.learning.stash import FeatureStash
from gateway.limits.service import Limits
from gateway.routing import PolicyStore, Rates
from gateway.settings import Settings
from gateway.telemetry import Telemetry
from workers.pool import Pools
from workers.supervisor import Supervisor
from workers.upstream import Upstream

if TYPE_CHECKING:
    from gateway.outcome import Outcome


@dataclass
class GatewayContext:
    settings: Settings
    policies: PolicyStore
    rates: Rates
    pools: Pools
    upstream: Upstream  # the pooled client to the workers
    accounting: Accounting
    started_at: int
    supervisor: Supervisor
    redis: Redis | None = None  # shared state of several gateway processes, when configured
    auth: Auth | None = None  # API keys -> principals (gateway/auth/)
    limits: Limits | None = None  # rate limits and budgets (gateway/limits/)
    cache: ResponseCache | None = None  # the response cache (gateway/cache/)
    telemetry: Telemetry = field(default_factory=lambda: Telemetry(None))  # traces, metrics (gateway/telemetry/)
    feedback: FeatureStash | None = None  # features of predictor-routed calls, for feedback (gateway/learning/)
    shadow: Shadow | None = None  # shadow evaluation of predictor-routed calls (gateway/learning/shadow/)
    sink: Callable[[Outcome], None] = field(init=False)  # where finished calls go: request metrics, then the recorder

    def __post_init__(self) -> None:
        self.sink = self.telemetry.sink(self.accounting.recorder.record)
