"""Which GPUs this machine has, and which ones each launched replica gets.

Discovery asks `nvidia-smi` (or NVML when the `pynvml` module is installed); an explicit list in the
configuration wins over both. Parsing is separate from running the tool so it is tested on real output.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

QUERY = ["--query-gpu=index,uuid,name,memory.total,memory.used", "--format=csv,noheader,nounits"]


class GpuError(Exception):
    """Not enough GPUs for the launch specs, or the inventory could not be read."""


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    memory_total_mib: int
    memory_used_mib: int


def parse_query_csv(text: str) -> list[Gpu]:
    """Output of `nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 5:
            raise GpuError(f"unexpected nvidia-smi line: {line!r}")
        index, uuid, name, total, used = fields
        gpus.append(Gpu(int(index), uuid, name, int(total), int(used)))
    return gpus


def _from_nvml() -> list[Gpu] | None:
    try:
        import pynvml  # type: ignore[import-not-found]  # optional: present on GPU hosts that install it
    except ImportError:
        return None
    pynvml.nvmlInit()
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            name = pynvml.nvmlDeviceGetName(h)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            gpus.append(Gpu(i, str(uuid), str(name), mem.total // 2**20, mem.used // 2**20))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def discover(nvidia_smi: str = "nvidia-smi") -> list[Gpu]:
    """The GPUs of this machine; empty when it has none (or no driver)."""
    exe = shutil.which(nvidia_smi)
    if exe is not None:
        try:
            out = subprocess.run([exe, *QUERY], capture_output=True, text=True, timeout=20, check=True).stdout
            return parse_query_csv(out)
        except (subprocess.SubprocessError, OSError):
            pass
    return _from_nvml() or []


def assign(
    available: Sequence[int], replicas: int, gpus_per_replica: int, taken: set[int] | None = None
) -> list[list[int]]:
    """Disjoint GPU sets, one per replica, from `available` (indices) minus `taken`; raises when short."""
    taken = taken if taken is not None else set()
    free = [i for i in available if i not in taken]
    need = replicas * gpus_per_replica
    if need > len(free):
        raise GpuError(
            f"{replicas} replica(s) x {gpus_per_replica} GPU(s) need {need} GPUs; "
            f"{len(free)} free of {len(available)} ({', '.join(map(str, free)) or 'none'})"
        )
    sets = [free[r * gpus_per_replica : (r + 1) * gpus_per_replica] for r in range(replicas)]
    taken.update(i for s in sets for i in s)
    return sets


def cuda_visible_devices(gpu_set: Sequence[int]) -> str:
    return ",".join(str(i) for i in gpu_set)
