"""Shadow evaluation of routed calls (README, "Shadow evaluation"): `start_shadow` builds it for the app's
lifespan; `Shadow.sample` is its one step on the request path."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from gateway.learning.shadow.calls import CallEnv
from gateway.learning.shadow.judge import EXACT, grading_prompt_path, load_grading_prompt
from gateway.learning.shadow.service import Shadow, ShadowConfigError, Watch
from gateway.learning.shadow.spend import DailySpend
from gateway.routing import PolicyStore
from gateway.settings import Settings
from workers.pool import Pools
from workers.upstream import Upstream

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from gateway.accounting import Accounting

__all__ = ["Shadow", "ShadowConfigError", "Watch", "start_shadow"]

log = logging.getLogger("gateway.learning")
PRIME_TIMEOUT_S = 5.0


async def start_shadow(settings: Settings, policies: PolicyStore, pools: Pools, upstream: Upstream,
                       accounting: Accounting, redis: Redis | None) -> Shadow | None:
    """The running shadow evaluator, or None when `shadow.sample_rate` is 0. Raises ShadowConfigError when a
    model it names has no pool, or GradingPromptError for a judge model without a usable grading prompt."""
    config = settings.shadow
    if not config.enabled:
        return None
    spend = DailySpend(accounting.engine, accounting.catalogue.currency, redis, config.key_prefix)
    env = CallEnv(upstream, settings.upstream_attempts, accounting.recorder, accounting.catalogue, spend)
    grading = None
    if config.judge != EXACT:
        grading = load_grading_prompt(grading_prompt_path(policies.directory))
    shadow = Shadow(config, policies, pools, env, accounting.engine, grading, accounting.catalogue.reference_model)
    for what, model in (("reference_model", config.reference_model),
                        ("judge", config.judge if config.judge != EXACT else None)):
        if model is not None and shadow.pool_of(model) is None:
            raise ShadowConfigError(f"shadow.{what}: no configured pool serves the model `{model}` (catalogue "
                                    f"models: {', '.join(policies.active.policy.models)})")
    try:  # today's spend so far, before the first call asks
        async with asyncio.timeout(PRIME_TIMEOUT_S):
            await spend.spent()
    except Exception as exc:
        log.warning("shadow evaluation: today's spend could not be read yet (%s); jobs read it when they run",
                    type(exc).__name__)
    shadow.start()
    log.info("shadow evaluation on: %.1f%% of routed calls, judge %s, budget %s %s a day", 100 * config.sample_rate,
             config.judge, config.daily_budget, accounting.catalogue.currency)
    return shadow
