"""What the handlers need, created once by the app's lifespan and handed to them through app state."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from gateway.accounting import Accounting
from gateway.auth.service import Auth
from gateway.cache.service import ResponseCache
from gateway.inference.kept_responses import KeptResponses
from gateway.learning.shadow.service import Shadow
from gateway.learning.stash import FeatureStash
from gateway.limits.service import Limits
from gateway.outcome import Step
from gateway.routing import PolicyStore, Rates
from gateway.settings import Settings
from gateway.telemetry import Telemetry
from workers.pool import Pools
from workers.supervisor import Supervisor
from workers.upstream import Upstream


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
    cache: ResponseCache  # the response cache (gateway/cache/); a bypass for every call when it is off
    telemetry: Telemetry  # traces, metrics (gateway/telemetry/)
    completion: tuple[Step, ...]  # the steps after a call's last byte, in order (gateway/completion.py)
    redis: Redis | None = None  # shared state of several gateway processes, when configured
    auth: Auth | None = None  # API keys -> principals (gateway/auth/)
    limits: Limits | None = None  # rate limits and budgets (gateway/limits/)
    feedback: FeatureStash | None = None  # features of predictor-routed calls, for feedback (gateway/learning/)
    shadow: Shadow | None = None  # shadow evaluation of predictor-routed calls (gateway/learning/shadow/)
    responses: KeptResponses | None = None  # the responses workers keep, by replica (gateway/inference/)
