"""router/request_limits.py: every request dimension is bounded before routing, by the policy's
`defaults.request_limits` (safe defaults, overridable in routing.yaml), and a call past a bound, of the wrong
type or below its minimum is a 400 naming the parameter and the limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.inference.openai_request import ChatFields, CompletionFields, parse_body
from router.errors import InvalidRequest
from router.policy import load_policy_set
from router.request_limits import DEFAULT_LIMITS, RequestLimits, check_request, depth_within, prompt_count
from tests.test_router_policy import ROUTING, errors_of, write_policy

pytestmark = pytest.mark.pure

SHIPPED = load_policy_set().request_limits
HI = [{"role": "user", "content": "hi"}]


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": HI, **extra}


def completion(**extra: Any) -> dict[str, Any]:
    return {"model": "demo-small", "prompt": "Once upon a time", **extra}


def refused(body: dict[str, Any], kind: str = "chat", limits: RequestLimits = SHIPPED) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        check_request(body, kind, limits)  # type: ignore[arg-type]
    assert info.value.status == 400 and info.value.type == "invalid_request_error"
    return info.value


def test_ordinary_calls_pass() -> None:
    parts = [{"type": "text", "text": "What is in this?"}, {"type": "image_url", "image_url": {"url": "x"}}, "and"]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    for body in (chat(), chat(max_tokens=8192, n=128, top_logprobs=20, logprobs=True, seed=-(2**63),
                              tools=[tool] * 128),
                 chat(messages=[{"role": "system", "content": None}, {"role": "user", "content": parts}] * 1024),
                 chat(max_completion_tokens=1, prompt_logprobs=0, best_of=20)):
        check_request(body, "chat", SHIPPED)
    for body in (completion(), completion(prompt=["a", [1, 2]] * 512, max_tokens=1), completion(prompt=[1] * 5000),
                 completion(n=4, best_of=8, logprobs=5, prompt=["a"] * 128), completion(max_tokens=0, echo=True)):
        check_request(body, "completion", SHIPPED)


# (kind, body, param, code, words the message must hold)
CASES: list[tuple[str, dict[str, Any], str, str, str]] = [
    ("chat", chat(n=1_000_000_000), "n", "integer_above_max_value", "<= 128"),
    ("chat", chat(n="five"), "n", "invalid_type", "expected an integer, but got a string"),
    ("chat", chat(n=2.5), "n", "invalid_type", "got a number"),
    ("chat", chat(n=[2]), "n", "invalid_type", "got an array"),
    ("chat", chat(n="129"), "n", "integer_above_max_value", "<= 128"),
    ("chat", chat(n=129.0), "n", "integer_above_max_value", "<= 128"),
    ("chat", chat(n=10**400), "n", "integer_above_max_value", "a 401-digit number"),
    ("completion", completion(best_of=21), "best_of", "integer_above_max_value", "<= 20"),
    ("completion", completion(prompt=["x"] * 1025), "prompt", "array_above_max_length", "maximum length 1024"),
    ("completion", completion(prompt=[[1]] * 1025), "prompt", "array_above_max_length", "array with length 1025"),
    ("completion", completion(prompt=["x"] * 100, n=11), "n", "integer_above_max_value", "1100 sequences"),
    ("completion", completion(prompt=["x"] * 100, best_of=11, n=2), "best_of", "integer_above_max_value", "x 11"),
    ("completion", completion(prompt=["x", None]), "prompt[1]", "invalid_type", "a string or an array of token ids"),
    ("completion", completion(logprobs=6), "logprobs", "integer_above_max_value", "<= 5"),
    ("completion", completion(logprobs=-1), "logprobs", "integer_above_max_value", "-1 (the whole vocabulary)"),
    ("completion", completion(logprobs="6"), "logprobs", "integer_above_max_value", "<= 5"),
    ("chat", chat(top_logprobs=21), "top_logprobs", "integer_above_max_value", "<= 20"),
    ("chat", chat(top_logprobs=-1), "top_logprobs", "integer_above_max_value", "the whole vocabulary"),
    ("chat", chat(logprobs=5), "logprobs", "invalid_type", "expected a boolean"),
    ("chat", chat(prompt_logprobs=-1), "prompt_logprobs", "integer_above_max_value", "<= 20"),
    ("chat", chat(logprobs="sure"), "logprobs", "invalid_type", "expected a boolean, but got a string"),
    ("chat", chat(prompt_logprobs=21), "prompt_logprobs", "integer_above_max_value", "<= 20"),
    ("chat", chat(tools=[{}] * 129), "tools", "array_above_max_length", "maximum length 128"),
    ("chat", chat(tools={"type": "function"}), "tools", "invalid_type", "expected an array"),
    ("chat", chat(tools=[{}, "f"]), "tools[1]", "invalid_type", "expected an object"),
    ("chat", chat(functions=[{}] * 129), "functions", "array_above_max_length", "maximum length 128"),
    ("chat", chat(messages=HI * 2049), "messages", "array_above_max_length", "maximum length 2048"),
    ("chat", chat(messages=[1, "x"]), "messages[0]", "invalid_type", "expected an object, but got an integer"),
    ("chat", chat(messages=[*HI, None]), "messages[1]", "invalid_type", "but got null"),
    ("chat", chat(messages=[{"content": "hi"}]), "messages[0].role", "missing_required_parameter", "role"),
    ("chat", chat(messages=[{"role": 5, "content": "hi"}]), "messages[0].role", "invalid_type", "a string"),
    ("chat", chat(messages=[{"role": "user", "content": 5}]), "messages[0].content", "invalid_type", "a string or"),
    ("chat", chat(messages=[{"role": "user", "content": ["a", 7]}]), "messages[0].content[1]", "invalid_type", "got"),
    ("chat", chat(messages=[{"role": "user", "content": [[]]}]), "messages[0].content[0]", "invalid_type", "array"),
    ("chat", chat(max_tokens=8193), "max_tokens", "integer_above_max_value", "largest context window"),
    ("chat", chat(max_tokens=10**12), "max_tokens", "integer_above_max_value", "<= 8192"),
    ("chat", chat(max_tokens="8193"), "max_tokens", "integer_above_max_value", "but got 8193 instead"),
    ("chat", chat(max_tokens=" 1_000_000 "), "max_tokens", "integer_above_max_value", "but got 1000000 instead"),
    ("chat", chat(max_tokens="1e9"), "max_tokens", "invalid_type", "expected an integer"),
    ("chat", chat(max_completion_tokens=9000), "max_completion_tokens", "integer_above_max_value", "<= 8192"),
    ("chat", chat(max_completion_tokens="9.5"), "max_completion_tokens", "invalid_type", "an integer"),
    ("chat", chat(seed="lucky"), "seed", "invalid_type", "an integer"),
]


@pytest.mark.parametrize(("kind", "body", "param", "code", "words"), CASES,
                         ids=[f"{c[2]}-{c[3]}-{i}" for i, c in enumerate(CASES)])
def test_a_dimension_past_its_bound_is_a_400_naming_it(kind: str, body: dict[str, Any], param: str, code: str,
                                                        words: str) -> None:
    error = refused(body, kind)
    assert (error.param, error.code) == (param, code)
    assert f"'{param}'" in error.message and words in error.message, error.message


def test_values_are_read_as_vllm_reads_them_and_bounded_so() -> None:
    """`"2"`, `2.0` and `true` are what the engine makes of them (router/lax.py): the body holds the values read,
    for everything that reads it after; the client's own are returned, for the worker."""
    body = chat(n="2", max_tokens=5.0, logprobs="true", top_logprobs=True, seed=" 7 ", best_of="3",
                max_completion_tokens="1_000")
    replaced = check_request(body, "chat", SHIPPED)
    assert {k: body[k] for k in replaced or ()} == {"n": 2, "max_tokens": 5, "logprobs": True, "top_logprobs": 1,
                                                    "seed": 7, "best_of": 3, "max_completion_tokens": 1000}
    assert replaced == {"n": "2", "max_tokens": 5.0, "logprobs": "true", "top_logprobs": True, "seed": " 7 ",
                        "best_of": "3", "max_completion_tokens": "1_000"}
    assert check_request(chat(n=2, max_tokens=5, logprobs=True), "chat", SHIPPED) is None  # nothing to read anew
    body = completion(prompt=["1", 2.0, True], logprobs=2.0, echo="yes")
    assert check_request(body, "completion", SHIPPED) == {"logprobs": 2.0}
    assert prompt_count(body) == 1  # token ids, as pydantic's `list[int]` reads them


def test_what_only_the_worker_judges_is_left_to_it() -> None:
    """Below a field's minimum, or a field vLLM 0.32 does not read: the worker's own answer, not the gateway's.
    Nothing here asks for more than a bound allows."""
    for body in (chat(n=0), chat(n=-3, max_tokens=-5), chat(max_completion_tokens=0), chat(seed=2**64),
                 chat(top_logprobs=-2, prompt_logprobs=-7), chat(best_of="many", functions="none"),
                 completion(max_tokens=0), completion(logprobs=-2), completion(prompt=["x", 5])):
        check_request(body, "chat" if "messages" in body else "completion", SHIPPED)
    refused(chat(functions=[{}] * 129))  # an ignored field is still bounded in size


def test_the_reader_applies_the_limits_it_is_given() -> None:
    """parse_body checks the policy's limits; without any it keeps the defaults (no `max_tokens` bound)."""
    body = b'{"messages": [{"role": "user", "content": "hi"}], "n": 200, "max_tokens": 100000}'
    with pytest.raises(InvalidRequest) as info:
        parse_body(body, ChatFields)
    assert info.value.param == "n"
    assert DEFAULT_LIMITS.max_tokens is None
    parse_body(body.replace(b"200", b"2"), ChatFields)
    with pytest.raises(InvalidRequest) as info:
        parse_body(body.replace(b"200", b"2"), ChatFields, SHIPPED)
    assert info.value.param == "max_tokens"
    with pytest.raises(InvalidRequest) as info:
        parse_body(b'{"prompt": ["a", "b", "c"], "n": 2}', CompletionFields, RequestLimits(max_sequences=5))
    assert info.value.param == "n" and "6 sequences" in info.value.message


def test_duplicate_keys_are_judged_by_the_last_as_the_workers_read_them() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_body(b'{"messages": [{"role": "user", "content": "hi"}], "n": 1, "n": 1000}', ChatFields)
    assert info.value.param == "n"
    parsed = parse_body(b'{"messages": [{"role": "user", "content": "hi"}], "n": 1000, "n": 1}', ChatFields)
    assert parsed.data["n"] == 1


def test_the_catalogues_largest_window_bounds_max_tokens_unless_the_policy_sets_it(tmp_path: Path) -> None:
    """The shipped catalogue's largest window is demo-large's 8,192; a test catalogue's is 32,768. Rules may still
    cap a smaller `max_tokens` (routing), and routing keeps only the models, fallbacks included, whose window
    holds the prompt and the output: the call never ends on one too small."""
    assert SHIPPED.max_tokens == 8192
    assert RequestLimits(max_tokens=8192, max_tokens_reason=SHIPPED.max_tokens_reason) == SHIPPED
    assert load_policy_set(write_policy(tmp_path / "a")).request_limits.max_tokens == 32768
    own = ROUTING.replace("defaults:\n", "defaults:\n  request_limits: {max_n: 4, max_tokens: 100000, max_depth: 8}\n")
    limits = load_policy_set(write_policy(tmp_path / "b", routing=own)).request_limits
    assert (limits.max_n, limits.max_tokens, limits.max_depth, limits.max_tools) == (4, 100000, 8, 128)
    error = refused(chat(max_tokens=100001), limits=limits)
    assert "<= 100000 (the gateway's limit)" in error.message
    assert refused(chat(n=5), limits=limits).param == "n"


def test_bad_limits_in_the_policy_are_reported_at_their_line(tmp_path: Path) -> None:
    own = ROUTING.replace("defaults:\n", "defaults:\n  request_limits:\n    max_n: 0\n    max_top_logprobs: -1\n")
    assert errors_of(write_policy(tmp_path / "a", routing=own)) == [
        f"{tmp_path / 'a' / 'routing.yaml'}:3: `max_n` must be >= 1",
        f"{tmp_path / 'a' / 'routing.yaml'}:4: `max_top_logprobs` must be >= 0",
    ]
    own = ROUTING.replace("defaults:\n", "defaults:\n  request_limits: {max_m: 3}\n")
    [error] = errors_of(write_policy(tmp_path / "b", routing=own))
    assert ":2: unknown field `max_m`" in error and "max_n" in error
    own = ROUTING.replace("defaults:\n", "defaults:\n  request_limits: {max_tools: many}\n")
    [error] = errors_of(write_policy(tmp_path / "c", routing=own))
    assert ":2: `max_tools`: expected integer, got string" in error


def nested(depth: int) -> Any:
    """An object `depth` levels deep: lists inside one object."""
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return {"x": value}


def test_depth_is_measured_without_recursion() -> None:
    assert depth_within(nested(64), 64) and not depth_within(nested(65), 64)
    assert depth_within({"a": 1, "b": "x"}, 1) and not depth_within({"a": []}, 1)
    assert depth_within({"a": [{"b": [1, 2]}, {"c": {}}], "d": {"e": None}}, 4)
    assert not depth_within({"a": [{"b": [1, 2]}, {"c": {}}], "d": {"e": None}}, 3)
    assert depth_within("scalar", 1) and depth_within([], 1)
    assert not depth_within(nested(100_000), 64)  # far past the interpreter's recursion limit


def test_prompt_count() -> None:
    assert [prompt_count(b) for b in (chat(), completion(), completion(prompt=[1, 2, 3]), completion(prompt=["a"] * 7),
                                      completion(prompt=[[1], [2]]), completion(prompt=[]))] == [1, 1, 1, 7, 2, 1]
