from __future__ import annotations

from pathlib import Path

import pytest

from workers.engine_metrics import EngineLoad, parse_load

pytestmark = pytest.mark.pure

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "vllm-0.32" / "metrics.prom"


def test_reads_the_real_vllm_metrics_page() -> None:
    assert parse_load(FIXTURE.read_text()) == EngineLoad(running=0.0, waiting=0.0, kv_cache=0.0)


def test_sums_engines_and_keeps_the_fullest_kv_cache() -> None:
    text = FIXTURE.read_text()
    text += (
        'vllm:num_requests_running{engine="1",model_name="tiny"} 3.0\n'
        'vllm:num_requests_waiting{engine="1",model_name="tiny"} 2.0\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="tiny"} 0.75\n'
        'vllm:num_requests_running{engine="0",model_name="tiny"} 1.0\n'
        "vllm:num_requests_waiting_by_reason 9.0\n"
    )
    assert parse_load(text) == EngineLoad(running=4.0, waiting=2.0, kv_cache=0.75)
