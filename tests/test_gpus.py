"""GPU discovery and assignment, on the real nvidia-smi/NVML output of an H200 machine (tests/fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.gpus import Gpu, GpuError, assign, cuda_visible_devices, parse_query_csv

pytestmark = pytest.mark.pure

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "nvidia-smi"


def test_parses_the_real_h200_inventory() -> None:
    gpus = parse_query_csv((FIXTURES / "query-gpu-noheader.csv").read_text())
    assert gpus == [Gpu(0, "GPU-0870f3d2-3202-f058-8615-020988542741", "NVIDIA H200", 143771, 0)]
    # The same GPU as NVML and `nvidia-smi -L` saw it.
    assert gpus[0].uuid in (FIXTURES / "nvml.txt").read_text()
    assert gpus[0].uuid in (FIXTURES / "nvidia-smi-L.txt").read_text()


def eight_gpus() -> list[Gpu]:
    line = (FIXTURES / "query-gpu-noheader.csv").read_text().strip()
    lines = [line.replace("0, GPU-0870", f"{i}, GPU-{i}870", 1) for i in range(8)]
    return parse_query_csv("\n".join(lines) + "\n")


def test_multi_gpu_assignment_is_disjoint() -> None:
    gpus = eight_gpus()
    assert [g.index for g in gpus] == list(range(8))
    taken: set[int] = set()
    tp2 = assign([g.index for g in gpus], replicas=3, gpus_per_replica=2, taken=taken)
    assert tp2 == [[0, 1], [2, 3], [4, 5]]
    single = assign([g.index for g in gpus], replicas=2, gpus_per_replica=1, taken=taken)
    assert single == [[6], [7]]
    assert [cuda_visible_devices(s) for s in tp2 + single] == ["0,1", "2,3", "4,5", "6", "7"]
    with pytest.raises(GpuError, match="need 1 GPUs; 0 free of 8"):
        assign([g.index for g in gpus], replicas=1, gpus_per_replica=1, taken=taken)


def test_one_h200_cannot_hold_tensor_parallel_two() -> None:
    gpus = parse_query_csv((FIXTURES / "query-gpu-noheader.csv").read_text())
    with pytest.raises(GpuError, match="need 2 GPUs; 1 free of 1"):
        assign([g.index for g in gpus], replicas=1, gpus_per_replica=2)


def test_explicit_list_is_used_as_given() -> None:
    assert assign([3, 5], replicas=2, gpus_per_replica=1) == [[3], [5]]


def test_malformed_output_is_an_error() -> None:
    with pytest.raises(GpuError):
        parse_query_csv("0, GPU-x, H200\n")
