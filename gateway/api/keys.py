"""`/admin/keys` and `/admin/teams`: keys and team limits over HTTP (role admin; the guard checks it).

- `GET /admin/keys[?tenant=]`: the keys (prefix only, never a key or its hash);
- `POST /admin/keys` `{tenant, team, role, scope?, name?, expires_at?, rpm?, tpm?, budget?, budget_period?}`:
  201 with the new key in `key`, shown this once;
- `POST /admin/keys/{key_id}/revoke`: revoked at once on this process, and on the others through Redis
  (else within their cache TTL);
- `GET /admin/teams[?tenant=]`, `PUT /admin/teams/{tenant}/{team}` `{rpm?, tpm?, budget?, budget_period?}`
  (all of the team's limits at once; `{}` removes them).

An admin key of scope `tenant` sees and manages its own tenant only (gateway/auth/scope.py): another
tenant in a query, a path or a new key is 403 `tenant_out_of_scope`, a new key of scope `all` is 403, and
another tenant's key is not found (404) when revoked.
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec
from litestar import Request, Response, get, post, put
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery

from gateway.auth import store
from gateway.auth.principal import Principal, principal_of
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


def _decode(body: bytes, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(str(exc), code="invalid_type") from None
    except msgspec.DecodeError:
        raise InvalidRequest("The body must be a JSON object.", code="invalid_json") from None


def _limits(b: TeamLimits) -> Any:
    budget = None
    if b.budget is not None:
        try:
            budget = Decimal(str(b.budget))
        except InvalidOperation:
            raise InvalidRequest(f"budget `{b.budget}` is not an amount", param="budget") from None
    return store.check_limits(b.rpm, b.tpm, budget, b.budget_period)


def _engine(state: State) -> Any:
    ctx: GatewayContext = state.ctx
    return ctx.accounting.engine


def _tenant_filter(p: Principal, tenant: str | None) -> str | None:
    """A `?tenant=` filter, checked as a tenant's name is (a value no tenant can have is a 400) and against
    the caller's scope (403); a tenant-scoped caller's own tenant when it gives none."""
    if tenant is None:
        return tenant_scope(p)
    try:
        store.check_name("tenant", tenant)
    except store.KeyProblem as exc:
        raise InvalidRequest(str(exc), param="tenant") from None
    check_tenant(p, tenant)
    return tenant


def _check_new_key(p: Principal, b: KeyRequest) -> None:
    """A tenant-scoped admin makes keys of its own tenant, of scope tenant (403 otherwise)."""
    check_tenant(p, b.tenant)
    if b.scope == "all" and p.scope != "all":
        raise Forbidden("Only a key of scope `all` may create a key of scope `all`.", param="scope",
                        code="tenant_out_of_scope")


@get("/admin/keys")
async def list_keys(request: Request[Any, Any, Any], state: State,
                    tenant: FromQuery[str | None] = None) -> dict[str, Any]:
    within = _tenant_filter(principal_of(request), tenant)
    return {"keys": [k.as_dict() for k in await store.list_keys(_engine(state), within)]}


@post("/admin/keys", status_code=201, opt={"request_body": KeyRequest})  # the document: gateway/api/openapi.py
async def create_key(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    ctx: GatewayContext = state.ctx
    b: KeyRequest = _decode(await request.body(), KeyRequest)
    assert ctx.auth is not None
    caller = principal_of(request)
    _check_new_key(caller, b)
    try:
        expires = datetime.fromisoformat(b.expires_at) if b.expires_at else None
        key, info = await store.create_key(ctx.accounting.engine, ctx.auth.secret, tenant=b.tenant, team=b.team,
                                           role=b.role, scope=b.scope, name=b.name, expires_at=expires,
                                           limits=_limits(b))
    except (store.KeyProblem, ValueError) as exc:
        raise InvalidRequest(str(exc), code="invalid_key_request") from None
    log.info("auth: key %s (%s...) created for tenant %s, team %s, role %s, scope %s by key %s", info.id,
             info.prefix, info.tenant, info.team, info.role, info.scope, caller.key_id)
    return Response(msgspec.json.encode({"key": key, **info.as_dict()}), status_code=201,
                    media_type="application/json")


@post("/admin/keys/{key_id:str}/revoke", status_code=200)
async def revoke_key(key_id: FromPath[str], request: Request[Any, Any, Any], state: State) -> dict[str, Any]:
    ctx: GatewayContext = state.ctx
    try:  # another tenant's key, for a tenant-scoped caller, is not found: as if it did not exist
        info = await store.revoke_key(ctx.accounting.engine, key_id, tenant_scope(principal_of(request)))
    except store.KeyProblem as exc:
        raise RouteNotFound(str(exc), code="key_not_found") from None
    if ctx.auth is not None:
        ctx.auth.forget(info.id)
    if ctx.redis is not None:
        await publish_revocation(ctx.redis, info.id)
    log.info("auth: key %s revoked by key %s", info.id, principal_of(request).key_id)
    return info.as_dict()


@get("/admin/teams")
async def list_teams(request: Request[Any, Any, Any], state: State,
                     tenant: FromQuery[str | None] = None) -> dict[str, Any]:
    within = _tenant_filter(principal_of(request), tenant)
    return {"teams": [t.as_dict() for t in await store.list_team_limits(_engine(state), within)]}


@put("/admin/teams/{tenant:str}/{team:str}", status_code=200, opt={"request_body": TeamLimits})
async def set_team(
    tenant: FromPath[str], team: FromPath[str], request: Request[Any, Any, Any], state: State
) -> dict[str, Any]:
    check_tenant(principal_of(request), tenant)
    b: TeamLimits = _decode(await request.body(), TeamLimits)
    try:
        limits = _limits(b)
        await store.set_team_limits(_engine(state), tenant, team, limits)
    except store.KeyProblem as exc:
        raise InvalidRequest(str(exc), code="invalid_team_limits") from None
    log.info("auth: limits of team %s/%s set by key %s", tenant, team, principal_of(request).key_id)
    return {"tenant": tenant, "team": team, **store.limits_dict(limits)}


KEY_HANDLERS = [list_keys, create_key, revoke_key, list_teams, set_team]
