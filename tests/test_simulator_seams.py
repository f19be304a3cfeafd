"""The vLLM simulator's parts on their own: SSE encoding (vllm_sim/sse.py), /metrics rendering
(vllm_sim/metrics.py) against what a real vLLM 0.32 wrote (tests/fixtures/vllm-0.32), and the
scheduler and prefix cache (vllm_sim/scheduling.py). tests/test_simulator.py drives them over HTTP."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from vllm_sim.metrics import SimMetrics, render_metrics
from vllm_sim.responses import SYSTEM_FINGERPRINT
from vllm_sim.scheduling import Overloaded, PrefixCache, Slots
from vllm_sim.sse import DONE, SSEEncoder
from vllm_sim.text import Generated, generate

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "vllm-0.32"
RID, CREATED, MODEL_JSON = b"chatcmpl-0123456789abcdef", 1795818555, b'"tiny"'


def events(raw: bytes) -> list[dict[str, Any]]:
    text = raw.decode()
    assert text.endswith("\n\n")
    out = []
    for event in text.split("\n\n")[:-1]:
        payload = event.removeprefix("data: ")
        assert payload != event and "\n" not in event
        if payload != "[DONE]":
            assert json.dumps(json.loads(payload), separators=(",", ":"), ensure_ascii=False) == payload
            out.append(json.loads(payload))
    return out


def keys(value: Any) -> Any:
    """Keys (in order) of every object, recursively; lists by their first element."""
    if isinstance(value, dict):
        return [(k, keys(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [keys(v) for v in value[:1]]
    return None


def stream(chat: bool, gens: list[Generated], include_usage: bool, batches: list[int]) -> bytes:
    """A whole stream written ``batches`` token steps at a time, as the server does when behind schedule."""
    sse = SSEEncoder(chat, RID, CREATED, MODEL_JSON, include_usage)
    steps = max(len(g.texts) for g in gens)
    parts: list[bytes] = []
    s = 0
    for size in batches:
        parts += sse.steps(gens, s, min(steps, s + size))
        s = min(steps, s + size)
    assert s == steps
    return b"".join(parts) + sse.tail(7, sum(len(g.texts) for g in gens))


def gen(choice: int = 0, max_tokens: int = 6, **kw: Any) -> Generated:
    return generate("Say hello.", seed=0, choice=choice, max_tokens=max_tokens, **kw)


# --------------------------------------------------------------------------- SSE


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("include_usage", [True, False])
def test_sse_chunks_have_vllms_shapes(chat: bool, include_usage: bool) -> None:
    name = "chat_stream_usage.sse" if chat and include_usage else (
        "chat_stream_nousage.sse" if chat else "completion_stream_usage.sse"
    )
    expected = events((FIXTURES / name).read_bytes())
    got = events(stream(chat, [gen()], include_usage, [6]))
    if not chat and not include_usage:  # no fixture: the usage one without its usage chunk, fingerprint moved
        expected = expected[:-1]
        expected[-1]["system_fingerprint"] = SYSTEM_FINGERPRINT
    by_kind = {"role": 0, "content": 1, "final": -2 if include_usage else -1}
    for kind, i in by_kind.items():
        if kind == "role" and not chat:
            continue
        assert keys(got[i]) == keys(expected[i]), kind
    if include_usage:
        assert keys(got[-1]) == keys(expected[-1])
        assert got[-1]["usage"] == {"prompt_tokens": 7, "total_tokens": 13, "completion_tokens": 6}
        assert got[-1]["system_fingerprint"] == SYSTEM_FINGERPRINT
    assert all(e["id"] == RID.decode() and e["created"] == CREATED and e["model"] == "tiny" for e in got)


def test_sse_bytes_do_not_depend_on_how_steps_are_batched() -> None:
    gens = [gen(0, 9), gen(1, 5)]
    one_by_one = stream(True, gens, True, [1] * 9)
    assert stream(True, gens, True, [9]) == one_by_one
    assert stream(True, gens, True, [2, 3, 4]) == one_by_one
    assert stream(False, gens, False, [4, 5]) == stream(False, gens, False, [1] * 9)


def test_sse_choices_interleave_and_end_on_their_own_last_token() -> None:
    gens = [gen(0, 4), gen(1, 2)]
    got = events(stream(True, gens, False, [4]))
    assert [c["choices"][0]["index"] for c in got[:2]] == [0, 1]  # one role chunk per choice first
    tokens = got[2:]
    assert [c["choices"][0]["index"] for c in tokens] == [0, 1, 0, 1, 0, 0]
    for i, g in enumerate(gens):
        mine = [c["choices"][0] for c in tokens if c["choices"][0]["index"] == i]
        assert "".join(c["delta"]["content"] for c in mine) == g.text
        assert [c["finish_reason"] for c in mine] == [None] * (len(g.texts) - 1) + ["length"]
    finals = [c for c in tokens if c["choices"][0]["finish_reason"] is not None]
    assert len(finals) == 2 and all(c["system_fingerprint"] == SYSTEM_FINGERPRINT for c in finals)
    assert all("system_fingerprint" not in c for c in tokens if c not in finals)


def test_sse_final_chunk_carries_the_stop_string() -> None:
    g = generate("x", seed=0, max_tokens=60, stop=["the"])
    assert g.finish_reason == "stop" and g.stop_reason == "the"
    final = events(stream(False, [g], False, [len(g.texts)]))[-1]["choices"][0]
    assert (final["finish_reason"], final["stop_reason"]) == ("stop", "the")


def test_sse_tail_without_usage_is_only_done() -> None:
    assert SSEEncoder(True, RID, CREATED, MODEL_JSON, False).tail(3, 4) == DONE


# --------------------------------------------------------------------------- /metrics


def samples(text: str) -> dict[str, list[str]]:
    """Sample names with their labels (values dropped), per metric family line name."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series = line.rsplit(" ", 1)[0]
            out.setdefault(series.split("{")[0], []).append(series)
    return out


def test_metrics_render_in_vllms_names_labels_and_buckets() -> None:
    fixture = (FIXTURES / "metrics.prom").read_text()
    ours = render_metrics(SimMetrics(), "tiny", running=2, waiting=1, kv_usage=0.25, kv_capacity=1024)
    assert ours.endswith("\n")
    meta = {line for line in fixture.splitlines() if line.startswith("# ")}
    for line in ours.splitlines():
        if line.startswith("# ") and "vllm:" in line and "cache_config_info" not in line:
            assert line in meta
    theirs, mine = samples(fixture), samples(ours)
    # vLLM cuts its token-count buckets at max_model_len; the simulator keeps one set for every length
    differ = {"vllm:request_prompt_tokens_bucket", "vllm:request_generation_tokens_bucket", "vllm:cache_config_info"}
    vllm_names = [n for n in mine if n.startswith("vllm:")]
    assert len(vllm_names) > 20
    for name in vllm_names:
        if name not in differ:
            assert mine[name] == theirs[name], name
    values = dict(line.rsplit(" ", 1) for line in ours.splitlines() if line and not line.startswith("#"))
    labels = '{engine="0",model_name="tiny"}'
    assert values["vllm:num_requests_running" + labels] == "2.0"
    assert values["vllm:num_requests_waiting" + labels] == "1.0"
    assert values["vllm:kv_cache_usage_perc" + labels] == "0.25"


def test_metrics_count_what_they_observe() -> None:
    m = SimMetrics()
    m.ttft.observe(0.003)
    m.ttft.observe(0.5)
    m.success["stop"] += 2
    m.injected["die"] += 1
    ours = render_metrics(m, 'a "quoted" model', running=0, waiting=0, kv_usage=0.0, kv_capacity=64)
    lines = set(ours.splitlines())
    mj = '"a \\"quoted\\" model"'
    assert f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.001",model_name={mj}}} 0.0' in lines
    assert f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.005",model_name={mj}}} 1.0' in lines
    assert f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",model_name={mj}}} 2.0' in lines
    assert f'vllm:time_to_first_token_seconds_count{{engine="0",model_name={mj}}} 2.0' in lines
    assert f'vllm:time_to_first_token_seconds_sum{{engine="0",model_name={mj}}} 0.503' in lines
    assert f'vllm:request_success_total{{engine="0",finished_reason="stop",model_name={mj}}} 2.0' in lines
    assert f'sim_injected_errors_total{{engine="0",kind="die",model_name={mj}}} 1.0' in lines
    assert 'kv_cache_size_tokens="64",num_gpu_blocks="4"' in ours


# --------------------------------------------------------------------------- scheduling


async def test_slots_queue_in_order_and_hand_over() -> None:
    slots = Slots(max_running=1, max_waiting=2)
    assert slots.try_enter() is None
    first, second = slots.try_enter(), slots.try_enter()
    assert first is not None and second is not None and slots.waiting == 2
    with pytest.raises(Overloaded):
        slots.try_enter()
    slots.abandon(first)  # gave up while queued: leaves the queue
    assert slots.waiting == 1 and slots.running == 1
    slots.release()  # the slot passes straight to the oldest waiter
    await asyncio.wait_for(second, 1)
    assert (slots.running, slots.waiting) == (1, 0)
    slots.release()
    assert slots.running == 0


def test_prefix_cache_counts_the_cached_leading_blocks() -> None:
    cache = PrefixCache(capacity_blocks=4)
    block = PrefixCache.BLOCK
    prompt = "a" * block + "b" * block + "c" * 10
    assert cache.lookup(prompt, 100) == 0  # first time: nothing cached, its 2 whole blocks remembered
    assert cache.lookup(prompt, 100) == 100 * 2 * block // len(prompt)
    assert cache.lookup("a" * block + "x" * block, 50) == 50 * block // (2 * block)  # the shared first block
    assert cache.lookup("z" * block * 8, 10) == 0  # 8 new blocks: the LRU keeps 4
    assert cache.lookup(prompt, 100) == 0
    assert PrefixCache(0).lookup(prompt, 100) == 0
