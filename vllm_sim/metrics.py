"""The simulator's counters and histograms, and ``/metrics``: Prometheus text in vLLM 0.32's metric
names, HELP texts, label order and bucket bounds, plus ``sim_*`` counters of its own."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import msgspec

__all__ = ["FINISH_REASONS", "Histogram", "SimMetrics", "render_metrics"]

FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
# fmt: off
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
_TOKEN_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
                  20000.0, 50000.0, 100000.0)
# fmt: on


class Histogram:
    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1


@dataclass(slots=True)
class SimMetrics:
    """Counters of one simulator (also read directly by in-process tests)."""

    received: int = 0
    cancelled: int = 0
    rejected: int = 0
    prompt_tokens: int = 0
    prefix_queries: int = 0
    prefix_hits: int = 0
    generation_tokens: int = 0
    success: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISH_REASONS, 0))
    injected: dict[str, int] = field(default_factory=lambda: {"error": 0, "stall": 0, "die": 0})
    ttft: Histogram = field(default_factory=lambda: Histogram(_TTFT_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(_LATENCY_BUCKETS))
    queue: Histogram = field(default_factory=lambda: Histogram(_LATENCY_BUCKETS))
    req_prompt: Histogram = field(default_factory=lambda: Histogram(_TOKEN_BUCKETS))
    req_generation: Histogram = field(default_factory=lambda: Histogram(_TOKEN_BUCKETS))


def _fmt(v: float) -> str:
    return repr(float(v))


def render_metrics(
    m: SimMetrics, model: str, *, running: int, waiting: int, kv_usage: float, kv_capacity: int
) -> str:
    """Prometheus text exposition: a subset of vLLM 0.32's metrics plus ``sim_*`` counters."""
    mj = msgspec.json.encode(model).decode()
    lb = f'engine="0",model_name={mj}'
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{{{labels}}} {_fmt(v)}" for labels, v in samples)

    def histogram(name: str, help_: str, h: Histogram) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} histogram")
        acc = 0
        for bound, c in zip((*h.buckets, None), h.counts, strict=True):
            acc += c
            le = "+Inf" if bound is None else _fmt(bound)
            out.append(f'{name}_bucket{{engine="0",le="{le}",model_name={mj}}} {_fmt(acc)}')
        out.append(f"{name}_count{{{lb}}} {_fmt(h.count)}")
        out.append(f"{name}_sum{{{lb}}} {_fmt(h.sum)}")

    metric("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.", [(lb, running)])
    metric("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", [(lb, waiting)])
    metric("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", [(lb, kv_usage)])
    metric(
        "vllm:num_preemptions_total", "counter", "Cumulative number of preemption from the engine.", [(lb, 0)]
    )
    metric("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", [(lb, m.prompt_tokens)])
    metric(
        "vllm:prefix_cache_queries_total",
        "counter",
        "Prefix cache queries, in terms of number of queried tokens.",
        [(lb, m.prefix_queries)],
    )
    metric(
        "vllm:prefix_cache_hits_total",
        "counter",
        "Prefix cache hits, in terms of number of cached tokens.",
        [(lb, m.prefix_hits)],
    )
    metric(
        "vllm:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        [(lb, m.generation_tokens)],
    )
    metric(
        "vllm:request_success_total",
        "counter",
        "Count of successfully processed requests.",
        [(f'engine="0",finished_reason="{r}",model_name={mj}', v) for r, v in m.success.items()],
    )
    metric(
        "vllm:admission_rejections_total",
        "counter",
        "Number of admission attempts rejected by a queue limit, by reason.",
        [
            (f'model_name={mj},reason="max_num_queued_reqs"', m.rejected),
            (f'model_name={mj},reason="max_num_queued_tokens"', 0),
        ],
    )
    histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", m.req_prompt)
    histogram("vllm:request_generation_tokens", "Number of generation tokens processed.", m.req_generation)
    histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", m.ttft)
    histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", m.e2e)
    histogram(
        "vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", m.queue
    )
    metric(
        "vllm:cache_config_info",
        "gauge",
        "Information of the LLMEngine CacheConfig",
        [
            (
                f'block_size="16",cache_dtype="auto",enable_prefix_caching="False",engine="0",'
                f'kv_cache_size_tokens="{kv_capacity}",num_gpu_blocks="{max(1, kv_capacity // 16)}"',
                1,
            )
        ],
    )
    metric(
        "sim_requests_received_total",
        "counter",
        "vllm-sim only: generation requests received (chat + completions).",
        [(lb, m.received)],
    )
    metric(
        "sim_requests_cancelled_total",
        "counter",
        "vllm-sim only: requests stopped because the client disconnected.",
        [(lb, m.cancelled)],
    )
    metric(
        "sim_requests_rejected_total",
        "counter",
        "vllm-sim only: requests answered 503 because the waiting queue was full.",
        [(lb, m.rejected)],
    )
    metric(
        "sim_injected_errors_total",
        "counter",
        "vllm-sim only: injected failures by kind (error, stall, die).",
        [(f'engine="0",kind="{k}",model_name={mj}', v) for k, v in m.injected.items()],
    )
    out.append("")
    return "\n".join(out)
