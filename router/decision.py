"""What goes into a routing decision besides the request's features, and what comes out."""

from __future__ import annotations

from decimal import Decimal

import msgspec

__all__ = ["CachePolicy", "Caller", "PoolState", "RouteDecision", "Target", "TraceStep"]


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling (from auth). Until auth lands the gateway passes the defaults."""

    tenant: str | None = "default"
    team: str | None = None
    key_id: str | None = None


class PoolState(msgspec.Struct, frozen=True):
    """A snapshot of one worker pool: can it take calls, and how busy is it (0 = idle, 1 = full)."""

    healthy: bool
    load: float = 0.0


class CachePolicy(msgspec.Struct, frozen=True, kw_only=True):
    """What the response cache may do with this request.

    `store` False means neither look up nor store. `namespace` None keeps entries tenant-scoped; a
    string shares them across tenants under that name (only when a policy says so).
    """

    store: bool
    ttl_s: int | None = None
    namespace: str | None = None
    reason: str = ""


class Target(msgspec.Struct, frozen=True):
    model: str
    pool: str


class TraceStep(msgspec.Struct, frozen=True):
    """One line of a decision's explanation: a rule or candidate looked at, whether it passed, and why."""

    step: str  # "rule" | "candidate" | "choice" | "fallback" | "cache" | "max_tokens"
    subject: str
    ok: bool
    detail: str


class RouteDecision(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    pool: str
    rule: str
    requested_model: str
    fallbacks: tuple[Target, ...]  # tried in order when the chosen pool fails before answering
    max_tokens_cap: int | None  # the rule's cap on output tokens
    max_tokens: int | None  # set the body's max_tokens (and max_completion_tokens) to this; None = unchanged
    cache: CachePolicy
    reference_model: str | None  # savings are measured against this model's price
    expected_cost: Decimal | None  # upper bound for this request on `model` (None: no rates given)
    reference_cost: Decimal | None
    currency: str | None
    policy_hash: str
    trace: tuple[TraceStep, ...]
    quality: dict[str, float] | None = None  # predicted quality of each candidate, when the rule asked
    quality_min: float | None = None  # the least predicted quality the rule accepted for this request

    def route_header(self) -> str:
        """`x-gateway-route`: the rule, then the threshold and each candidate's predicted quality if any."""
        if self.quality is None:
            return self.rule
        parts = [self.rule]
        if self.quality_min is not None:
            parts.append(f"min={self.quality_min:.2f}")
        parts += [f"{name}={score:.2f}" for name, score in self.quality.items()]
        return "; ".join(parts)
