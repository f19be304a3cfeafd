"""The Keys page (`/console/keys`, admins): the keys and the teams' limits, a form to create a key (its
secret shown once, on the answer's page), revocation (a confirmation page, then a POST), and a form that
sets all of a team's limits at once.

Every operation is gateway/key_admin.py's, as `/admin/keys` and `/admin/teams` do it, with the same checks
and scope: a tenant-scoped admin sees and manages its own tenant's keys and teams only (its forms have no
tenant or scope field: its own tenant, scope tenant). A refused form is shown again with the reason and
the API's status (400, 403); another tenant's key is not found (404)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, FromQuery
from litestar.response import Template

from gateway import key_admin
from gateway.api.report_query import check_query
from gateway.auth.principal import PERIODS, ROLES, Principal, principal_of
from gateway.console.pages import KEYS
from gateway.console.render import page
from gateway.context import GatewayContext
from gateway.key_admin import KeyRequest, TeamLimits
from router.errors import GatewayError, InvalidRequest

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
CSRF_FIELD = "_csrf_token"
SCOPES = ("tenant", "all")


def _fields(form: dict[str, str]) -> dict[str, str]:
    """A form's filled-in fields, but the CSRF token (an empty field is a value not given)."""
    return {k: v.strip() for k, v in form.items() if k != CSRF_FIELD and v.strip()}


def _convert(fields: dict[str, Any], kind: type[Any]) -> Any:
    try:
        return msgspec.convert(fields, kind, strict=False)  # "60" is 60: a form's fields are all text
    except msgspec.ValidationError as exc:
        raise InvalidRequest(str(exc), code="invalid_type") from None


def _utc_iso(value: str) -> str:
    """A date and time with an offset; one without (a browser's date and time field) read as UTC."""
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"expires_at `{value}` is not a date and time (ISO 8601)", param="expires_at") from None
    return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).isoformat()


def key_request(p: Principal, form: dict[str, str]) -> KeyRequest:
    """The form's new key (the caller's own tenant when the form names none)."""
    fields: dict[str, Any] = {"tenant": p.tenant, **_fields(form)}
    if "expires_at" in fields:
        fields["expires_at"] = _utc_iso(fields["expires_at"])
    return _convert(fields, KeyRequest)  # type: ignore[no-any-return]


def team_request(p: Principal, form: dict[str, str]) -> tuple[str, str, TeamLimits]:
    """The form's team (tenant, team) and all its limits (none given: the team's limits removed)."""
    fields = _fields(form)
    tenant, team = fields.pop("tenant", p.tenant), fields.pop("team", "")
    if not team:
        raise InvalidRequest("Name the team.", param="team")
    return tenant, team, _convert(fields, TeamLimits)


async def _keys_page(request: Request[Any, Any, Any], status: int = 200, tenant: str | None = None,
                     **context: Any) -> Template:
    """The page: the keys and teams `p` may see (of `tenant` only, when given), with `context`'s notices."""
    ctx: GatewayContext = request.app.state.ctx
    p = principal_of(request)
    keys = await key_admin.list_keys(ctx, p, tenant)
    teams = await key_admin.list_teams(ctx, p, tenant)
    answer = page(request, KEYS, "keys.html", keys=[k.as_dict() for k in keys], teams=[t.as_dict() for t in teams],
                  tenant=tenant or "", roles=ROLES, scopes=SCOPES, periods=PERIODS, platform=p.scope == "all",
                  **{"form": {}, "team_form": {}, "problem": None, "team_problem": None, "notice": None, **context})
    answer.status_code = status
    return answer


@get("/keys", opt=KEYS.opt, guards=[check_query], include_in_schema=False)
async def keys_page(request: Request[Any, Any, Any], tenant: FromQuery[str | None] = None) -> Template:
    return await _keys_page(request, tenant=tenant or None)


@post("/keys", opt=KEYS.opt, include_in_schema=False)
async def create_key(request: Request[Any, Any, Any], data: Form) -> Template:
    """A new key, its secret on the answer's page only (never stored, logged or shown again)."""
    ctx: GatewayContext = request.app.state.ctx
    try:
        key, info = await key_admin.create_key(ctx, principal_of(request), key_request(principal_of(request), data))
    except GatewayError as exc:
        return await _keys_page(request, exc.status, form=_fields(data), problem=exc.message)
    return page(request, KEYS, "key_created.html", secret=key, key=info.as_dict())


@get("/keys/{key_id:str}/revoke", opt=KEYS.opt, guards=[check_query], include_in_schema=False)
async def confirm_revoke(request: Request[Any, Any, Any], key_id: FromPath[str]) -> Template:
    """The key and a button that revokes it (404 for a key the caller may not see)."""
    info = await key_admin.get_key(request.app.state.ctx, principal_of(request), key_id)
    return page(request, KEYS, "key_revoke.html", key=info.as_dict())


@post("/keys/{key_id:str}/revoke", opt=KEYS.opt, include_in_schema=False)
async def revoke_key(request: Request[Any, Any, Any], key_id: FromPath[str]) -> Template:
    info = await key_admin.revoke_key(request.app.state.ctx, principal_of(request), key_id)
    return await _keys_page(request, notice=f"Key {info.id} ({info.name or info.prefix}) is revoked.")


@post("/teams", opt=KEYS.opt, include_in_schema=False)
async def set_team(request: Request[Any, Any, Any], data: Form) -> Template:
    """All of a team's limits at once."""
    ctx: GatewayContext = request.app.state.ctx
    p = principal_of(request)
    try:
        tenant, team, limits = team_request(p, data)
        await key_admin.set_team(ctx, p, tenant, team, limits)
    except GatewayError as exc:
        return await _keys_page(request, exc.status, team_form=_fields(data), team_problem=exc.message)
    return await _keys_page(request, notice=f"The limits of team {tenant}/{team} are set.")


HANDLERS = [keys_page, create_key, confirm_revoke, revoke_key, set_team]
