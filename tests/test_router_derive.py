"""Models a pool serves but the catalogue does not list: their derived entries (router/derive.py), the
routing view the gateway builds from what the workers said (gateway/routing.py), and what /v1/models lists
for them (gateway/model_list.py). No network: the workers' answers are given as values, as the health
checks leave them on the replicas."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest

from gateway.model_list import model_entries, model_entry
from gateway.routing import ActivePolicy, PolicyStore, derivation_notes, route, served_models, unlisted_models
from router.classify import classify
from router.decide import decide
from router.decision import Caller, PoolState
from router.derive import DERIVED_RULE, UNKNOWN_WINDOW, ServedModel, routing_policy
from router.errors import ModelNotFound, NoCapableModel, NoHealthyModel, PolicyDenied
from router.policy import PolicySet, default_policy_dir, load_policy_set
from router.pricing import TokenRates
from workers.pool import Pool, Pools, Replica

pytestmark = pytest.mark.pure

SHIPPED = load_policy_set(default_policy_dir())  # lists demo-small (pool small) and demo-large (pool large)
TINY = ServedModel("tiny", "p-tiny", 1024)
BIG = ServedModel("org/big", "p-big", 8192)
IDLE = {"p-tiny": PoolState(True, 0.0), "p-big": PoolState(True, 0.0)}


def chat(content: str = "Hello there", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], **extra}


def decide_auto(policy: PolicySet, body: dict[str, Any], health: dict[str, PoolState] | None = None,
                rates: dict[str, TokenRates] | None = None, caller: Caller | None = None) -> Any:
    features = classify(body, "chat", {}, policy.classifier)
    return decide(features, caller or Caller(), "auto", policy, IDLE if health is None else health, rates or {})


def card(model: str, window: int, root: str | None = None) -> dict[str, Any]:
    """A /v1/models entry as vLLM 0.32 gives it."""
    return {"id": model, "object": "model", "created": 1796000000, "owned_by": "vllm", "root": root or model,
            "parent": None, "max_model_len": window,
            "permission": [{"id": "modelperm-1", "object": "model_permission", "created": 1796000000}]}


def pool(name: str, model: str, lists: tuple[str, ...] | None = None, window: int | None = None,
         healthy: bool = True) -> Pool:
    replica = Replica(f"http://{name}.invalid", name, healthy=healthy)
    replica.lists = lists
    if lists is not None and model in lists and window is not None:
        replica.card = card(model, window, root=f"/models/{model}")
    return Pool(name, model, [replica])


# ------------------------------------------------------------------------------------------ router/derive.py


def test_with_no_served_model_in_the_catalogue_auto_routes_among_the_derived_ones() -> None:
    policy = routing_policy(SHIPPED, ["p-tiny", "p-big"], [TINY, BIG])
    assert policy is not SHIPPED
    assert list(policy.models) == ["tiny", "org/big"]
    assert (policy.models["tiny"].context_window, policy.models["org/big"].context_window) == (1024, 8192)
    assert policy.predictor is None and dict(policy.aliases) == {}
    assert policy.default_rule.name == DERIVED_RULE
    assert dict(policy.lookup) == {"auto": ("auto", None)}  # named calls go straight to their pool
    # Equal tiers, no prices: the less loaded pool, then the name.
    d = decide_auto(policy, chat(max_tokens=16), {"p-tiny": PoolState(True, 0.5), "p-big": PoolState(True, 0.0)})
    assert (d.model, d.pool, d.rule) == ("org/big", "p-big", DERIVED_RULE)
    assert decide_auto(policy, chat(max_tokens=16)).model == "org/big"  # a tie: by name
    # A price makes the priced model the cheaper one.
    rates = {"tiny": TokenRates(Decimal("0.1"), Decimal("0.05"), Decimal("0.2"), "USD")}
    assert decide_auto(policy, chat(max_tokens=16), rates=rates).model == "tiny"


def test_a_request_past_a_derived_window_goes_to_a_model_whose_window_holds_it() -> None:
    policy = routing_policy(SHIPPED, ["p-tiny", "p-big"], [TINY, BIG])
    rates = {"tiny": TokenRates(Decimal("0.1"), Decimal("0.05"), Decimal("0.2"), "USD")}
    d = decide_auto(policy, chat("routing " * 900, max_tokens=200), rates=rates)
    assert d.model == "org/big"
    assert any(t.subject == "tiny" and not t.ok and "context window 1,024" in t.detail for t in d.trace)
    with pytest.raises(NoCapableModel, match="the largest is 8,192"):
        decide_auto(policy, chat("routing " * 9000, max_tokens=200))


def test_derived_models_take_any_request_the_worker_may_serve() -> None:
    # The gateway knows nothing of a derived model's abilities: tools, schemas, images reach the worker.
    policy = routing_policy(SHIPPED, ["p-tiny"], [TINY])
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    assert decide_auto(policy, chat(tools=[tool], max_tokens=16)).model == "tiny"


def test_derived_routing_keeps_the_policys_deny_rules_and_fails_over_nowhere_unhealthy() -> None:
    policy = routing_policy(SHIPPED, ["p-tiny"], [TINY])
    assert [r.name for r in policy.rules] == ["suspended-tenants"]
    with pytest.raises(PolicyDenied, match="suspended"):
        decide_auto(policy, chat(), caller=Caller(tenant="suspended"))
    with pytest.raises(NoHealthyModel) as info:
        decide_auto(policy, chat(), {"p-tiny": PoolState(False, 0.0)})
    assert "tiny (pool p-tiny)" in info.value.message and info.value.headers["retry-after"]


def test_a_window_not_told_yet_refuses_no_request_for_its_size() -> None:
    policy = routing_policy(SHIPPED, ["p-tiny"], [ServedModel("tiny", "p-tiny", None)])
    assert policy.models["tiny"].context_window == UNKNOWN_WINDOW
    assert decide_auto(policy, chat("routing " * 9000, max_tokens=4000)).model == "tiny"


def test_the_policy_routes_as_written_when_it_serves_a_catalogued_model_or_nothing_is_derived() -> None:
    assert routing_policy(SHIPPED, ["small", "p-tiny"], [TINY]) is SHIPPED
    assert routing_policy(SHIPPED, ["p-tiny"], []) is SHIPPED


# ---------------------------------------------------------------------------------- the gateway's view


def active(*pools: Pool) -> ActivePolicy:
    all_pools = Pools(list(pools))
    return ActivePolicy(SHIPPED, all_pools, time.time(), served_models(SHIPPED, all_pools), unlisted_models(all_pools))


def test_a_pool_whose_workers_do_not_list_its_model_is_not_derived() -> None:
    a = active(pool("p-tiny", "tiny", ("tiny",), 1024), pool("ghost", "ghost", ("tiny",)),
               pool("p-big", "org/big", None))
    assert a.served == (TINY, ServedModel("org/big", "p-big", None))  # org/big: not asked yet, window unknown
    assert a.derived and list(a.routing.models) == ["tiny", "org/big"]
    assert a.routable == ("auto", "org/big", "tiny")  # ghost's worker says it does not serve it
    assert a.unlisted == {"ghost"} and "ghost" in a.direct  # a call naming it still reaches its pool
    assert list(a.windows) == ["tiny"]  # a budget's reservation is bounded by known windows only
    notes = derivation_notes(a)
    assert "lists no model a configured pool serves: `auto` routes among the pools' own models" in notes[0]
    assert "`tiny` (pool `p-tiny`, context window 1,024)" in notes[0]
    assert "`org/big` (pool `p-big`, context window not known)" in notes[0]
    assert f"add them to {default_policy_dir() / 'models.yaml'}" in notes[0]
    assert "gateway init --from-pools" in notes[0]
    assert notes[1].startswith("pool `ghost`: its workers serve tiny, not `ghost`")


def test_auto_is_not_offered_when_nothing_can_serve_it() -> None:
    a = active(pool("ghost", "ghost", ("tiny",)), pool("p-new", "new", None))  # p-new: not asked yet
    assert a.derived and a.routable == ("auto", "new")  # `new` may serve it: derived, window unknown
    a = active(pool("ghost", "ghost", ("tiny",)), pool("other", "other", ("tiny",)))
    assert not a.derived and a.routable == ()
    with pytest.raises(ModelNotFound) as info:
        route(a, chat(), "chat", "auto", {}, Caller(), {})
    assert info.value.status == 404 and info.value.param == "model"
    assert info.value.message == (f"No model can be routed for `auto`: {default_policy_dir() / 'models.yaml'} lists no "
                                  "model a configured pool serves, and no pool's workers serve the pool's model.")
    assert model_entries(a, 1) == []
    direct = route(a, chat(), "chat", "ghost", {}, Caller(), {})  # not offered, still forwarded: the worker answers
    assert direct.targets[0][1].name == "ghost"


def test_route_sends_auto_to_a_derived_model_and_a_name_straight_to_its_pool() -> None:
    a = active(pool("p-tiny", "tiny", ("tiny",), 1024), pool("p-big", "org/big", ("org/big",), 8192))
    chosen = route(a, chat(max_tokens=8), "chat", "auto", {}, Caller(), {})
    assert chosen.rule == DERIVED_RULE and chosen.targets[0][0] in ("tiny", "org/big")
    assert chosen.models is not None and set(chosen.models) == {"tiny", "org/big"}
    direct = route(a, chat(), "chat", "tiny", {}, Caller(), {})
    assert (direct.rule, direct.decision, direct.targets[0][0]) == ("direct", None, "tiny")


def test_a_served_catalogued_model_keeps_the_policy_and_derived_ones_are_called_by_name() -> None:
    a = active(pool("small", "demo-small", ("demo-small",), 1024), pool("p-tiny", "tiny", ("tiny",), 1024))
    assert not a.derived and a.routing is SHIPPED
    assert a.routable == ("auto", "demo-small", "fast", "tiny")
    notes = derivation_notes(a)
    assert len(notes) == 1 and "not in" in notes[0] and "`auto` never chooses them" in notes[0]


# ------------------------------------------------------------------------------------------- /v1/models


def test_the_listing_passes_the_workers_fields_and_gives_aliases_and_auto_theirs() -> None:
    small = pool("small", "demo-small", ("demo-small",), 1024)
    a = active(small, pool("large", "demo-large", None), pool("p-tiny", "tiny", ("tiny",), 1024))
    entries = {e["id"]: e for e in model_entries(a, 1700000000)}
    assert list(entries) == ["auto", "demo-small", "demo-large", "fast", "smart", "tiny"]
    assert entries["demo-small"] == small.replicas[0].card  # as the worker gave it
    assert entries["fast"] == {**entries["demo-small"], "id": "fast"}  # an alias: its model's, under its name
    assert entries["tiny"]["root"] == "/models/tiny" and entries["tiny"]["max_model_len"] == 1024
    # No worker has answered for demo-large yet: the gateway's fields and the catalogue's window.
    assert entries["demo-large"] == {"id": "demo-large", "object": "model", "created": 1700000000,
                                     "owned_by": "gateway", "max_model_len": 8192}
    assert entries["smart"]["id"] == "smart" and entries["smart"]["max_model_len"] == 8192
    # auto: the gateway's own, with the largest window it may route to.
    assert entries["auto"] == {"id": "auto", "object": "model", "created": 1700000000, "owned_by": "gateway",
                               "max_model_len": 8192}
    assert model_entry(a, "nope", 1) is None
    assert model_entry(a, "demo-small", 1) == entries["demo-small"]


def test_the_listing_prefers_a_healthy_replicas_entry_and_the_smallest_window() -> None:
    down, up = Replica("http://a.invalid", "p", healthy=False), Replica("http://b.invalid", "p", healthy=True)
    down.lists, down.card = ("tiny",), card("tiny", 2048, root="/old")
    up.lists, up.card = ("tiny",), card("tiny", 1024, root="/new")
    p = Pool("p", "tiny", [down, up])
    assert p.model_card() is up.card and p.max_model_len() == 1024
    a = active(p)
    assert a.served == (ServedModel("tiny", "p", 1024),)
    assert model_entry(a, "auto", 1) == {"id": "auto", "object": "model", "created": 1, "owned_by": "gateway",
                                         "max_model_len": 1024}


def test_the_store_derives_again_when_the_workers_say_something_new(caplog: pytest.LogCaptureFixture) -> None:
    tiny, ghost = pool("p-tiny", "tiny", None), pool("ghost", "ghost", None)
    store = PolicyStore(default_policy_dir(), Pools([tiny, ghost]))
    first = store.active
    caplog.clear()  # what the store said of the catalogue's own models
    assert first.served == (ServedModel("tiny", "p-tiny", None), ServedModel("ghost", "ghost", None))
    # The first health checks: tiny's window is told, ghost's worker serves something else.
    tiny.replicas[0].lists, tiny.replicas[0].card = ("tiny",), card("tiny", 1024)
    ghost.replicas[0].lists = ("tiny",)
    with caplog.at_level("WARNING", logger="gateway.routing"):
        store.refresh_served()
        store.refresh_served()  # nothing new: the same policy in force, nothing said twice
    assert store.active is not first and store.active.served == (TINY,)
    assert store.active.unlisted == {"ghost"} and store.active.routable == ("auto", "tiny")
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and "`tiny` (pool `p-tiny`, context window 1,024)" in said[0]
    assert said[1].startswith("policy: pool `ghost`: its workers serve tiny, not `ghost`")
    kept = store.active
    tiny.replicas[0].card = card("tiny", 2048)  # restarted with a larger --max-model-len
    store.refresh_served()
    assert store.active is not kept and store.active.routing.models["tiny"].context_window == 2048
