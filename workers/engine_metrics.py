"""Reading the load gauges a balancer needs from a vLLM `/metrics` page (Prometheus text)."""

from __future__ import annotations

from dataclasses import dataclass

_GAUGES = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_cache",
}


@dataclass(frozen=True)
class EngineLoad:
    running: float = 0.0
    waiting: float = 0.0
    kv_cache: float = 0.0  # 0..1; the highest of the replica's engines


def parse_load(text: str) -> EngineLoad:
    """Sums running and waiting over the replica's engines (data-parallel ranks), keeps the fullest KV cache."""
    values = {"running": 0.0, "waiting": 0.0, "kv_cache": 0.0}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name not in _GAUGES:
            continue
        field = _GAUGES[name]
        value = float(line.rsplit(" ", 1)[1])
        values[field] = max(values[field], value) if field == "kv_cache" else values[field] + value
    return EngineLoad(**values)
