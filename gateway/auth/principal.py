"""Who the caller is, as its key says, and the limits that apply to it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

import msgspec

from router.decision import Caller

Role = Literal["app", "finance", "admin"]
ROLES: tuple[Role, ...] = ("app", "finance", "admin")
Scope = Literal["tenant", "all"]  # a key's reach: its own tenant, or every tenant (gateway/auth/scope.py)
SCOPES: tuple[Scope, ...] = ("tenant", "all")
Period = Literal["day", "month", "total"]
PERIODS: tuple[Period, ...] = ("day", "month", "total")


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Rate limits (per minute) and a budget for one key or one team; None = no limit of that kind."""

    rpm: int | None = None
    tpm: int | None = None
    budget: Decimal | None = None  # in the price catalogue's currency
    budget_period: Period = "month"

    @property
    def any(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.budget is not None


NO_LIMITS = Limits()


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """The caller. Tenant and team come only from the key, never from request headers."""

    tenant: str
    team: str | None
    key_id: str | None
    role: Role
    scope: Scope = "tenant"  # a last-known-keys snapshot written before scopes reads as "tenant": the safe side
    key_limits: Limits = NO_LIMITS
    team_limits: Limits = NO_LIMITS
    expires_at: float | None = None  # epoch seconds

    @property
    def caller(self) -> Caller:
        return Caller(tenant=self.tenant, team=self.team, key_id=self.key_id)

    @property
    def limited(self) -> bool:
        return self.key_limits.any or self.team_limits.any


# Auth off: every call is the default tenant's, as before keys existed, with no limits; nothing is out of scope.
ANONYMOUS = Principal(tenant="default", team=None, key_id=None, role="admin", scope="all")


def principal_of(scope_holder: Any) -> Principal:
    """The principal the auth guard put into the request's scope (ANONYMOUS when there is none)."""
    state = scope_holder.scope.get("state") or {}
    p = state.get("principal")
    return p if isinstance(p, Principal) else ANONYMOUS
