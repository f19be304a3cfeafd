"""The budget reservation is a true upper bound of a call's cost, for each shape of body that once passed
it: a list of prompts, a prompt built against routing's token sampler, `n` and `best_of` times the
prompts, no `max_tokens`, images, numbers written as strings. Each is checked against what the worker
counts: the simulator's tokenizer (tiktoken's cl100k_base, over its chat template), and all the output
the call may write. Token limits keep the expected tokens; the reservation's integer rates never fall
below the accounting's `Price.cost`."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.accounting.prices import DEFAULT_PRICES_FILE, Price, current_token_rates, load_prices, parse_prices
from gateway.auth.principal import Limits as PrincipalLimits
from gateway.auth.principal import Principal
from gateway.limits.backend import MemoryBackend
from gateway.limits.service import Limits, per_million, to_units
from gateway.limits.upper_bound import choices, lax_int, output_limit, text_bound
from gateway.routing import ActivePolicy, Route, route
from router.classify import Kind
from router.errors import InvalidRequest
from router.policy import default_policy_dir, load_policy_set
from router.request_limits import prompt_count
from vllm_sim.text import count_tokens, render_chat
from workers.pool import Pool, Pools, Replica

pytestmark = pytest.mark.pure

CATALOGUE = load_prices(DEFAULT_PRICES_FILE)
SMALL = Pool("small", "demo-small", [Replica("http://127.0.0.1:1", "small", healthy=True)])
LARGE = Pool("large", "demo-large", [Replica("http://127.0.0.1:2", "large", healthy=True)])
ACTIVE = ActivePolicy(load_policy_set(default_policy_dir()), Pools([SMALL, LARGE]), time.time())
WINDOWS = {"demo-small": 1024, "demo-large": 8192}  # the catalogue's context windows (policies/models.yaml)
ENGLISH = "the quick brown fox jumps over the lazy dog "


CALLER = Principal(tenant="acme", team="red", key_id="key_a", role="app", key_limits=PrincipalLimits(),
                   team_limits=PrincipalLimits()).caller


def routed(body: dict[str, Any], kind: Kind = "chat") -> Route:
    return route(ACTIVE, body, kind, body.get("model", "auto"), {}, CALLER,
                 current_token_rates(CATALOGUE, datetime.now(UTC)))


def reserve(body: dict[str, Any], kind: Kind = "chat", chosen: Route | None = None) -> tuple[int, int]:
    """(expected tokens, reserved units) of `body`, sent as compact JSON."""
    limits = Limits(MemoryBackend(), CATALOGUE, None)
    return limits.estimate(chosen or routed(body, kind), body, len(msgspec.json.encode(body)), kind, time.time())


def cost(model: str, prompt: int, output: int) -> int:
    """What `prompt` and `output` tokens cost at `model`'s price, in units (what the settlement records)."""
    price = CATALOGUE.price_at(model, time.time())
    assert price is not None
    return to_units(price.cost(prompt, 0, output))


def chat_tokens(messages: list[dict[str, Any]]) -> int:
    """The prompt tokens the simulated worker counts for a chat: its template, tiktoken's count."""
    rendered = render_chat(messages)
    return count_tokens(rendered.text) + 64 * rendered.non_text_parts


def sampler_attack(total: int, filler: str) -> str:
    """Plain English where routing's estimate samples a long text (its head, middle and tail: router/tokens.py),
    `filler` everywhere else: the estimate extrapolates the English ratio to the whole."""
    chars = list(filler * total)[:total]
    for start in (0, (total - 300) // 2 - 22, total - 300):
        chars[start:start + 300] = (ENGLISH * 8)[:300]
    return "".join(chars)


def test_a_list_of_prompts_reserves_the_output_of_every_prompt() -> None:
    prompts = [f"Write a haiku about the number {i}." for i in range(100)]
    body = {"model": "demo-large", "prompt": prompts, "max_tokens": 16}
    tokens, reserved = reserve(body, "completion")
    worst = cost("demo-large", sum(count_tokens(p) for p in prompts), 100 * 16)  # every prompt writes 16 tokens
    assert reserved >= worst
    assert reserved < 2 * worst  # and not absurdly more: the bytes of the body, plus 256 per prompt
    assert tokens >= 100 * 16  # token limits count every prompt's output too
    # Token ids: one prompt, however many ids.
    assert prompt_count({"prompt": list(range(500))}) == 1 and prompt_count({"prompt": [[1, 2], [3]]}) == 2


def test_a_prompt_built_against_the_token_sampler_is_reserved_in_full() -> None:
    text = sampler_attack(4600, "Ж")
    messages = [{"role": "user", "content": text}]
    body = {"model": "demo-large", "messages": messages, "max_tokens": 32}
    chosen = routed(body)
    assert chosen.features is not None
    real = chat_tokens(messages)
    assert real < WINDOWS["demo-large"]  # the worker takes it
    assert chosen.features.prompt_tokens * 4 < real  # routing's sample was fooled
    _, reserved = reserve(body, chosen=chosen)
    assert reserved >= cost("demo-large", real, 32)


@pytest.mark.parametrize("filler", ["🂡", "ꙮ", "\u0b95", "中", "\x00", "é"])
def test_no_text_has_more_tokens_than_bytes(filler: str) -> None:
    """What the bound stands on, for the simulator's tokenizer: multi-byte, CJK, emoji and control text."""
    text = sampler_attack(5000, filler)
    assert count_tokens(text) <= len(text.encode())
    body = msgspec.json.encode({"messages": [{"role": "user", "content": text}]})
    assert len(body) >= len(text.encode())  # JSON escapes only lengthen it


def test_n_and_best_of_multiply_every_prompt() -> None:
    body = {"model": "demo-large", "prompt": ["one", "two", "three"], "max_tokens": 10, "n": 2, "best_of": 4}
    _, reserved = reserve(body, "completion")
    assert reserved >= cost("demo-large", 0, 3 * 4 * 10)  # best_of is the larger: 4 sequences per prompt
    assert choices({"n": 5, "best_of": 2}) == 5 and choices({}) == 1


def test_without_max_tokens_each_sequence_may_fill_the_context_window() -> None:
    body = {"model": "demo-large", "messages": [{"role": "user", "content": "Tell me everything."}], "n": 2}
    _, reserved = reserve(body)
    assert reserved >= cost("demo-large", 0, 2 * WINDOWS["demo-large"])
    # A call that may fall back: each target's own window at its own price, the dearest.
    body = {"model": "demo-small", "prompt": "Once upon a time"}
    _, reserved = reserve(body, "completion")
    assert reserved >= max(cost("demo-small", 0, WINDOWS["demo-small"]), cost("demo-large", 0, WINDOWS["demo-large"]))


def test_an_image_bounds_the_prompt_by_the_context_window() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                             {"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}]
    body = {"model": "demo-large", "messages": messages, "max_tokens": 8}
    # The shipped catalogue has no vision model: demo-large's window, as a vision model would be routed.
    vision = Route((("demo-large", LARGE),), "test", None, None, None, ACTIVE.policy.models)
    _, reserved = reserve(body, chosen=vision)
    assert reserved >= cost("demo-large", WINDOWS["demo-large"], 8)  # its tokens are the processor's choice
    assert reserved >= cost("demo-large", chat_tokens(messages), 8)


def test_numbers_are_read_as_the_engine_reads_them() -> None:
    """vLLM's request models coerce "3", 3.0 and "40" to integers: the gateway's own parsing skips them."""
    body = {"model": "demo-large", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10,
            "max_completion_tokens": "40", "n": "3"}
    _, reserved = reserve(body)
    assert reserved >= cost("demo-large", 0, 3 * 40)
    assert [lax_int(v) for v in (3, 3.0, 2.5, "3", " 7 ", "4.2", "1e3", "x", None, [1], True)] == [
        3, 3, 3, 3, 7, 5, 1000, None, None, None, 1]
    assert lax_int("9" * 5000) == lax_int(float("inf")) and lax_int("9" * 5000) > 10**17  # past any budget
    # Completions read max_tokens only (max_completion_tokens is chat's); a limit below 1 limits nothing.
    assert output_limit({"max_completion_tokens": 5}, "completion") is None
    assert output_limit({"max_tokens": 0}, "chat") is None and output_limit({"max_tokens": 9}, "chat") == 9


def test_a_request_template_bounds_the_prompt_by_the_window() -> None:
    assert text_bound(100, {"messages": [], "chat_template": "{% for i in range(9999) %}x{% endfor %}"}, 1, 0, 0) \
        is None
    assert text_bound(100, {"messages": [{"role": "user", "content": "a"}]}, 1, 256, 8) == 100 + 256 + 8
    assert text_bound(100, {"prompt": ["a", "b"]}, 2, 256, 8) == 100 + 2 * 256


def test_token_limits_take_the_expected_tokens() -> None:
    """A tpm limit is a rate, settled to the real count after the call: not the context window."""
    body = {"model": "demo-large", "messages": [{"role": "user", "content": "Hi"}]}
    chosen = routed(body)
    assert chosen.features is not None
    tokens, _ = reserve(body, chosen=chosen)
    assert tokens == chosen.features.prompt_tokens + chosen.features.output_tokens < WINDOWS["demo-large"]


def test_a_model_outside_the_catalogue_needs_max_tokens_under_a_budget() -> None:
    direct = Route((("demo-large", LARGE),), "direct", None, None)  # no catalogue: its window is unknown
    limits = Limits(MemoryBackend(), CATALOGUE, None)
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}]}
    with pytest.raises(InvalidRequest) as info:
        limits.estimate(direct, body, 60, "chat", time.time())
    assert info.value.status == 400 and info.value.param == "max_tokens"
    assert limits.estimate(direct, body, 60, "chat", time.time(), priced=False)[1] == 0  # no budget: no question
    _, reserved = limits.estimate(direct, {**body, "max_tokens": 50}, 80, "chat", time.time())
    assert reserved >= cost("demo-large", 80, 50)
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
             "max_tokens": 5}
    with pytest.raises(InvalidRequest) as info:
        limits.estimate(direct, image, 90, "chat", time.time())
    assert info.value.param == "messages"


GPU_TIME = parse_prices("""
currency: EUR
models:
  odd:
    - effective_from: 2026-01-01
      gpu_time: {gpu_hour_price: 3.3333333333, gpus: 3, prefill_tokens_per_s: 7919, decode_tokens_per_s: 311}
  cached-dearer:
    - effective_from: 2026-01-01
      per_token: {input_per_million: 0.0000000007, cached_input_per_million: 1.5, output_per_million: 13.1313131313}
""", "odd-prices.yaml")


PRICES = [*CATALOGUE.all_prices(), *GPU_TIME.all_prices()]  # both modes, awkward numbers, a dearer cache


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PRICES), st.integers(0, 2_000_000), st.integers(0, 2_000_000))
def test_the_reservation_rates_never_price_below_the_accounting(price: Price, prompt: int, output: int) -> None:
    """`per_million`'s integer rates against `Price.cost`, the one formula settlements use: at least as much
    as any split of the prompt into cached and uncached tokens, and at most a few units more."""
    prompt_rate, output_rate = per_million(price)
    assert prompt_rate is not None
    reserved = -(-(prompt * prompt_rate + output * output_rate) // 1_000_000)
    recorded = max(to_units(price.cost(prompt, 0, output)), to_units(price.cost(prompt, prompt, output)))
    assert recorded <= reserved <= recorded + 2 + (prompt + output) // 1_000_000
    assert Decimal(reserved).scaleb(-10) >= price.cost(prompt, prompt // 2, output)
