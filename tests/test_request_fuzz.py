"""The request reader fuzzed: arbitrary bytes and structured but hostile JSON (deep nesting, invalid UTF-8
spliced into strings, integers past 64 bits, odd shapes where the gateway expects messages, prompts and
tools) through what a call does before a worker: the reader and the request limits (parse_body), routing
(classify, the predictor, decide), the cache key, the upstream body and the prefix for affinity. Each body
either goes through or is refused with a 400; nothing else escapes (a RecursionError, a UnicodeDecodeError,
a TypeError, a 500). Then a handful of the nastiest bodies through the served app: a 400 in OpenAI's shape,
and a usage record with that status."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.accounting.prices import DEFAULT_PRICES_FILE, current_token_rates, load_prices
from gateway.cache.keys import cache_key
from gateway.inference.openai_request import ChatFields, CompletionFields, parse_body, prompt_prefix, upstream_body
from gateway.routing import ActivePolicy, route
from router.decision import Caller
from router.errors import GatewayError
from router.policy import default_policy_dir, load_policy_set
from tests.inprocess_gateway import InProcessGateway
from workers.pool import Pool, Pools, Replica

POLICY = load_policy_set(default_policy_dir())
POOLS = Pools([Pool("small", "demo-small", [Replica("http://127.0.0.1:1", "small", healthy=True)]),
               Pool("large", "demo-large", [Replica("http://127.0.0.1:2", "large", healthy=True)])])
ACTIVE = ActivePolicy(POLICY, POOLS, time.time())
RATES = current_token_rates(load_prices(DEFAULT_PRICES_FILE), datetime.now(UTC))
KINDS = (("chat", ChatFields), ("completion", CompletionFields))


def through_the_gateway(body: bytes) -> None:
    """What a call does with `body` before a worker has it; raises only what a client may be answered."""
    for kind, fields in KINDS:
        try:
            parsed = parse_body(body, fields, POLICY.request_limits)
            chosen = route(ACTIVE, parsed.data, kind, parsed.fields.model, {}, Caller(), RATES)  # type: ignore[arg-type]
            model = chosen.targets[0][0]
            cache_key("c:", kind, parsed.data, model, None, "default")  # type: ignore[arg-type]
            upstream_body(parsed, model, body, chosen.decision.max_tokens if chosen.decision else None)
            prompt_prefix(parsed.data, 256)
        except GatewayError as exc:  # a 400, or a 404 for a model name no pool serves (as vLLM answers it)
            assert exc.status == 400 or (exc.status, exc.code) == (404, "model_not_found"), (exc.status, exc.message)
            assert exc.type == "invalid_request_error" and exc.message


# ------------------------------------------------------------------------------------------------ strategies

SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=4), max_leaves=10)
PART = st.one_of(JSON, st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "input_audio", "x"]),
                                              "text": JSON}))
MESSAGE = st.one_of(JSON, st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["user", "system", "assistant", "tool"]), JSON)},
    optional={"content": st.one_of(st.text(max_size=200), st.lists(PART, max_size=4), JSON),
              "tool_calls": st.lists(JSON, max_size=3)}))
SMALL_INTS = st.integers(min_value=-3, max_value=300) | st.integers(min_value=-(2**80), max_value=2**80)
FIELDS: dict[str, Any] = {
    "model": st.sampled_from(ACTIVE.routable) | JSON,
    "messages": st.lists(MESSAGE, max_size=6) | JSON,
    "prompt": st.text(max_size=100) | st.lists(st.text(max_size=20) | st.lists(SMALL_INTS, max_size=4), max_size=6)
    | JSON,
    "n": SMALL_INTS | JSON, "best_of": SMALL_INTS | JSON, "max_tokens": SMALL_INTS | JSON,
    "max_completion_tokens": SMALL_INTS | JSON, "logprobs": SMALL_INTS | st.booleans() | JSON,
    "top_logprobs": SMALL_INTS | JSON, "tools": st.lists(JSON, max_size=4) | JSON, "stream": st.booleans() | JSON,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans() | JSON}) | JSON, "seed": SMALL_INTS,
    "temperature": st.floats(allow_nan=False, allow_infinity=False) | JSON, "response_format": JSON,
}
BODY = st.fixed_dictionaries({}, optional=FIELDS)


@st.composite
def hostile(draw: st.DrawFn) -> bytes:
    """A JSON object, then perhaps spoilt: invalid UTF-8 spliced in (inside a string, or anywhere), a deep
    nesting added, a number too large for any integer type, NaN."""
    raw = msgspec.json.encode(draw(BODY))
    spoil = draw(st.sampled_from(["none", "utf8-in-string", "bytes-anywhere", "deep", "big-number", "nan"]))
    if spoil == "utf8-in-string" and b'":"' in raw:
        at = raw.index(b'":"') + 3
        raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x28\x8c"])) + raw[at:]
    elif spoil == "bytes-anywhere":
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at:]
    elif spoil == "deep" and raw.endswith(b"}"):
        depth = draw(st.sampled_from([63, 64, 65, 200, 990, 5_000, 200_000]))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        leaf = b"1" if opener == b'{"a":' else b""
        sep = b"," if len(raw) > 2 else b""
        raw = raw[:-1] + sep + b'"deep":' + opener * depth + leaf + closer * depth + b"}"
    elif spoil == "big-number" and raw.endswith(b"}"):
        sep = b"," if len(raw) > 2 else b""
        raw = raw[:-1] + sep + b'"n":' + b"9" * draw(st.sampled_from([20, 400, 4299, 4301, 10_000])) + b"}"
    elif spoil == "nan" and raw.endswith(b"}"):
        raw = raw[:-1] + (b"," if len(raw) > 2 else b"") + b'"temperature":NaN}'
    return raw


FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.pure
@FUZZ
@given(st.binary(max_size=512))
@example(b'{"messages":[{"role":"user","content":"caf\xc3\x28"}]}')
@example(b'{"messages":' + b"[" * 5000 + b"]" * 5000 + b"}")
def test_arbitrary_bytes(body: bytes) -> None:
    through_the_gateway(body)


@pytest.mark.pure
@FUZZ
@given(hostile())
@example(b'{"messages":[{"role":"user","content":"hi"}],"n":1000000000}')
@example(b'{"model":"demo-small","prompt":' + b'["x",' * 0 + msgspec.json.encode(["x"] * 5000) + b"}")
def test_hostile_json(body: bytes) -> None:
    through_the_gateway(body)


# ------------------------------------------------------------------------------------------------ the served app

NASTIEST: list[tuple[str, bytes, str | None]] = [
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "caf\xc3\x28"}], "max_tokens": 4}', None),
    ("/v1/chat/completions", b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "x": ' + b'{"a":' * 500 + b"1"
     + b"}" * 500 + b"}", None),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "n": 1000000000}', "n"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000000000000}',
     "max_tokens"),
    ("/v1/chat/completions", b'{"model": "demo-small", "messages": [1, "x", null]}', "messages[0]"),
    ("/v1/completions", b'{"model": "demo-small", "prompt": ' + msgspec.json.encode(["x"] * 100_000) + b"}", "prompt"),
    ("/v1/completions", b'{"model": "demo-small", "prompt": "hi", "max_tokens": ' + b"9" * 30 + b"}", "max_tokens"),
    ("/v1/completions", b"[1, 2]", None),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    gw = InProcessGateway(tmp_path_factory.mktemp("fuzz"), {"recorder_flush_interval_s": 0.05}).start()
    yield gw
    gw.stop()


def test_the_nastiest_bodies_are_400s_in_openais_shape_and_recorded(served: InProcessGateway) -> None:
    ids = []
    for path, body, param in NASTIEST:
        r = httpx.post(served.base_url + path, content=body, timeout=30,
                       headers={**served.auth, "content-type": "application/json"})
        assert r.status_code == 400, (path, body[:80], r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
        assert error["param"] == param and error["message"], error
        ids.append(r.headers["x-request-id"])
    served.flush()
    with sqlite3.connect(Path(served.settings.state_dir) / "gateway.db") as conn:
        rows = conn.execute(f"SELECT request_id, status, http_status FROM usage_records WHERE request_id IN "
                            f"({','.join('?' * len(ids))})", ids).fetchall()
    assert sorted(rows) == sorted((rid, "rejected", 400) for rid in ids)
    ok = httpx.post(served.api + "/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                            "max_tokens": 4}, headers=served.auth, timeout=30)
    assert ok.status_code == 200  # and the gateway serves on
