"""One request body's routing decision explained, nothing sent to a worker: what `POST /admin/route/explain`
answers and what the console's Routing page shows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.context import GatewayContext
from gateway.inference.openai_request import ChatFields, CompletionFields, parse_body
from gateway.routing import pool_states
from router.classify import Kind, classify
from router.decide import decide
from router.decision import Caller
from router.errors import GatewayError, InvalidRequest
from router.explain import explain_dict
from router.quality import probe_for

KINDS: tuple[Kind, ...] = ("chat", "completion")


def explain_route(ctx: GatewayContext, body: bytes, kind: str, headers: Mapping[str, str],
                  caller: Caller) -> dict[str, Any]:
    """The whole decision for `body` as `caller` (tenant, team of a key, never of request headers), with its
    trace; a routing refusal is part of the answer. A bad `kind` or body raises InvalidRequest (a 400)."""
    if kind not in KINDS:
        raise InvalidRequest("kind must be `chat` or `completion`", param="kind")
    active = ctx.policies.active
    parsed = parse_body(body, ChatFields if kind == "chat" else CompletionFields, active.policy.request_limits)
    features = classify(parsed.data, kind, headers, active.policy.classifier)
    policy = active.routing  # the files' policy, or the one derived from the pools when it serves nothing
    probe = probe_for(policy.predictor, parsed.data, features)
    decision, error = None, None
    try:
        decision = decide(features, caller, parsed.fields.model, policy, pool_states(active.pools),
                          ctx.rates.current(), probe)
    except GatewayError as exc:
        error = exc
    return explain_dict(policy, features, caller, parsed.fields.model, decision, error, probe)
