"""Keys and team limits managed by an admin: the checks and operations behind `/admin/keys`, `/admin/teams`
(gateway/api/keys.py) and the console's Keys page (gateway/console/keys_page.py), one piece for both.

Every operation takes the caller (its principal) and keeps to its scope (gateway/auth/scope.py): an admin
key of scope `tenant` sees and manages its own tenant only; another tenant in a filter, a path or a new
key is 403 `tenant_out_of_scope`, a new key of scope `all` is 403, and another tenant's key is not found
(404) when revoked. Bad values are 400s (InvalidRequest). A key is returned once, by `create_key`, and
never logged.
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal, InvalidOperation

import msgspec

from gateway.auth import store
from gateway.auth.principal import Limits, Principal
from gateway.auth.scope import check_tenant, tenant_scope
from gateway.auth.service import publish_revocation
from gateway.context import GatewayContext
from router.errors import Forbidden, InvalidRequest, RouteNotFound

log = logging.getLogger("gateway.auth")


class TeamLimits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A team's limits (PUT /admin/teams/...); also a new key's."""

    rpm: int | None = None
    tpm: int | None = None
    budget: str | int | None = None  # an amount, as text (exact) or an integer
    budget_period: str | None = None


class KeyRequest(TeamLimits, forbid_unknown_fields=True, kw_only=True):
    """A new key (POST /admin/keys)."""

    tenant: str
    team: str
    role: str
    scope: str = "tenant"  # tenant | all
    name: str | None = None
    expires_at: str | None = None  # ISO 8601 with an offset


def limits_of(b: TeamLimits) -> Limits:
    """The limits asked for, checked (a 400 names what is wrong)."""
    budget = None
    if b.budget is not None:
        try:
            budget = Decimal(str(b.budget))
        except InvalidOperation:
            raise InvalidRequest(f"budget `{b.budget}` is not an amount", param="budget") from None
    return store.check_limits(b.rpm, b.tpm, budget, b.budget_period)


def tenant_filter(p: Principal, tenant: str | None) -> str | None:
    """A tenant filter, checked as a tenant's name is (a value no tenant can have is a 400) and against the
    caller's scope (403); a tenant-scoped caller's own tenant when it gives none."""
    if tenant is None:
        return tenant_scope(p)
    try:
        store.check_name("tenant", tenant)
    except store.KeyProblem as exc:
        raise InvalidRequest(str(exc), param="tenant") from None
    check_tenant(p, tenant)
    return tenant


def check_new_key(p: Principal, b: KeyRequest) -> None:
    """A tenant-scoped admin makes keys of its own tenant, of scope tenant (403 otherwise)."""
    check_tenant(p, b.tenant)
    if b.scope == "all" and p.scope != "all":
        raise Forbidden("Only a key of scope `all` may create a key of scope `all`.", param="scope",
                        code="tenant_out_of_scope")


async def list_keys(ctx: GatewayContext, p: Principal, tenant: str | None = None) -> list[store.KeyInfo]:
    return await store.list_keys(ctx.accounting.engine, tenant_filter(p, tenant))


async def get_key(ctx: GatewayContext, p: Principal, key_id: str) -> store.KeyInfo:
    """One key by its id, if `p` may see it (404 otherwise, as `revoke_key` answers)."""
    for info in await store.list_keys(ctx.accounting.engine, tenant_scope(p)):
        if info.id == key_id:
            return info
    raise RouteNotFound(f"no key `{key_id}`", code="key_not_found")


async def list_teams(ctx: GatewayContext, p: Principal, tenant: str | None = None) -> list[store.TeamInfo]:
    return await store.list_team_limits(ctx.accounting.engine, tenant_filter(p, tenant))


async def create_key(ctx: GatewayContext, p: Principal, b: KeyRequest) -> tuple[str, store.KeyInfo]:
    """A new key as `p` may make it: (the key, to show this once; what is stored about it)."""
    assert ctx.auth is not None
    check_new_key(p, b)
    try:
        expires = datetime.fromisoformat(b.expires_at) if b.expires_at else None
        key, info = await store.create_key(ctx.accounting.engine, ctx.auth.secret, tenant=b.tenant, team=b.team,
                                           role=b.role, scope=b.scope, name=b.name, expires_at=expires,
                                           limits=limits_of(b))
    except (store.KeyProblem, ValueError) as exc:
        raise InvalidRequest(str(exc), code="invalid_key_request") from None
    log.info("auth: key %s (%s...) created for tenant %s, team %s, role %s, scope %s by key %s", info.id,
             info.prefix, info.tenant, info.team, info.role, info.scope, p.key_id)
    return key, info


async def revoke_key(ctx: GatewayContext, p: Principal, key_id: str) -> store.KeyInfo:
    """Revoked at once on this process, and on the others through Redis (else within their cache TTL)."""
    try:  # another tenant's key, for a tenant-scoped caller, is not found: as if it did not exist
        info = await store.revoke_key(ctx.accounting.engine, key_id, tenant_scope(p))
    except store.KeyProblem as exc:
        raise RouteNotFound(str(exc), code="key_not_found") from None
    if ctx.auth is not None:
        ctx.auth.forget(info.id)
    if ctx.redis is not None:
        await publish_revocation(ctx.redis, info.id)
    log.info("auth: key %s revoked by key %s", info.id, p.key_id)
    return info


async def set_team(ctx: GatewayContext, p: Principal, tenant: str, team: str, b: TeamLimits) -> Limits:
    """All of a team's limits at once (none asked for removes them)."""
    check_tenant(p, tenant)
    try:
        limits = limits_of(b)
        await store.set_team_limits(ctx.accounting.engine, tenant, team, limits)
    except store.KeyProblem as exc:
        raise InvalidRequest(str(exc), code="invalid_team_limits") from None
    log.info("auth: limits of team %s/%s set by key %s", tenant, team, p.key_id)
    return limits
