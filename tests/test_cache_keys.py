"""The cache key: canonical (key order, whitespace, number spelling do not matter), everything that
changes the answer in it, delivery and client-side options out of it, and scoped by tenant unless a
policy shares a namespace."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from gateway.cache.keys import NOT_IN_KEY, cache_key, canonical_request

pytestmark = pytest.mark.pure

BASE: dict[str, Any] = {
    "model": "auto",
    "messages": [{"role": "user", "content": "What is 2 + 2?"}],
    "temperature": 0,
    "max_tokens": 16,
}


def key(body: dict[str, Any], *, model: str = "demo-small", cap: int | None = None, tenant: str = "default",
        namespace: str | None = None, kind: str = "chat") -> str:
    return cache_key("p:", kind, body, model, cap, tenant, namespace)  # type: ignore[arg-type]


def test_key_order_and_whitespace_do_not_matter() -> None:
    spaced = msgspec.json.decode(b'{ "max_tokens" : 16,\n "temperature": 0,  "messages": [ {"content": '
                                 b'"What is 2 + 2?", "role": "user"} ], "model": "auto" }')
    assert key(spaced) == key(BASE)


def test_integral_floats_are_integers() -> None:
    assert key({**BASE, "temperature": 0.0}) == key(BASE)
    assert key({**BASE, "top_p": 1.0}) == key({**BASE, "top_p": 1})
    assert key({**BASE, "top_p": 0.5}) != key({**BASE, "top_p": 1})


@pytest.mark.parametrize("field", sorted(NOT_IN_KEY - {"model"}))
def test_delivery_and_client_side_fields_do_not_change_it(field: str) -> None:
    values = {"stream": True, "stream_options": {"include_usage": True}, "user": "alice", "metadata": {"a": "b"},
              "store": True, "service_tier": "auto", "priority": 5, "request_id": "r-1"}
    assert key({**BASE, field: values[field]}) == key(BASE)


@pytest.mark.parametrize(("field", "value"), [
    ("temperature", 0.2), ("top_p", 0.9), ("top_k", 5), ("seed", 7), ("max_tokens", 17), ("stop", ["\n"]),
    ("n", 2), ("logprobs", True), ("top_logprobs", 2), ("presence_penalty", 0.1), ("frequency_penalty", 0.1),
    ("response_format", {"type": "json_object"}), ("tool_choice", "required"), ("logit_bias", {"42": 1}),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("max_completion_tokens", 8), ("min_tokens", 2), ("repetition_penalty", 1.1),  # vLLM's own parameters too
    ("messages", [{"role": "user", "content": "What is 2 + 3?"}]),
])
def test_everything_that_changes_the_answer_changes_it(field: str, value: Any) -> None:
    assert key({**BASE, field: value}) != key(BASE)


def test_the_routed_model_counts_not_the_requested_name() -> None:
    assert key({**BASE, "model": "fast"}) == key({**BASE, "model": "auto"})  # both routed to demo-small
    assert key(BASE, model="demo-large") != key(BASE)


def test_a_policy_cap_is_applied_as_sent() -> None:
    assert key({**BASE, "max_tokens": 4000}, cap=2048) == key({**BASE, "max_tokens": 2048})
    assert key({**BASE, "max_completion_tokens": 4000}, cap=2048) == key(
        {**BASE, "max_tokens": 2048, "max_completion_tokens": 2048})
    assert b'"max_tokens":2048' in canonical_request("chat", {**BASE}, "m", 2048)


def test_chat_and_completion_never_share() -> None:
    body = {"prompt": "hi", "temperature": 0}
    assert key(body, kind="chat") != key(body, kind="completion")


def test_tenants_never_share_an_entry() -> None:
    a, b = key(BASE, tenant="acme"), key(BASE, tenant="globex")
    assert a != b
    assert a.startswith("p:t=acme:") and b.startswith("p:t=globex:")
    # a tenant name cannot forge another scope: the scope is hashed as well as shown
    assert key(BASE, tenant="acme:x") != key(BASE, tenant="acme")


def test_a_policy_namespace_is_shared_across_tenants_and_apart_from_them() -> None:
    shared_a = key(BASE, tenant="acme", namespace="support")
    shared_b = key(BASE, tenant="globex", namespace="support")
    assert shared_a == shared_b and shared_a.startswith("p:ns=support:")
    assert shared_a != key(BASE, tenant="support")  # not the tenant called `support`
    assert shared_a != key(BASE, tenant="acme", namespace="other")
