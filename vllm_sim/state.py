"""What one simulated engine holds between requests: its configuration, the current failure
injection, counters, scheduler and caches."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import msgspec

from vllm_sim.config import Faults, SimConfig
from vllm_sim.metrics import SimMetrics
from vllm_sim.scheduling import Live, PrefixCache, Slots, kv_cache_usage

__all__ = ["SimState"]


@dataclass(slots=True, eq=False)
class SimState:
    config: SimConfig
    faults: Faults
    metrics: SimMetrics
    slots: Slots
    prefix_cache: PrefixCache
    rng: random.Random  # draws the injected faults
    fixed_created: int | None
    model_json: bytes
    kv_capacity: int
    # the latency model in seconds
    ttft_s: float
    prompt_token_s: float
    output_token_s: float
    live: set[Live] = field(default_factory=set)
    # SIMULATOR DEBUG AID (tests of trace propagation): whitelisted headers of the last generation request.
    last_request_headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, config: SimConfig) -> SimState:
        """A fresh engine: nothing received yet, the configured faults."""
        return cls(
            config=config,
            faults=config.initial_faults(),
            metrics=SimMetrics(),
            slots=Slots(config.max_running, config.max_waiting),
            prefix_cache=PrefixCache(config.prefix_cache_blocks),
            rng=random.Random(config.seed),
            fixed_created=config.resolved_created(),
            model_json=msgspec.json.encode(config.model),
            kv_capacity=config.kv_capacity(),
            ttft_s=config.ttft_ms / 1000.0,
            prompt_token_s=config.prompt_token_us / 1e6,
            output_token_s=config.output_token_ms / 1000.0,
        )

    def created(self) -> int:
        return self.fixed_created if self.fixed_created is not None else int(time.time())

    def fires(self, rate: float) -> bool:
        """Whether a fault of probability ``rate`` fires now (0 and 1 draw nothing)."""
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        return self.rng.random() < rate

    def kv_cache_usage(self) -> float:
        return kv_cache_usage(self.live, asyncio.get_running_loop().time(), self.kv_capacity)
