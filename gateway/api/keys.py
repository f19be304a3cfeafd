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
another tenant's key is not found (404) when revoked. The checks and operations are gateway/key_admin.py's,
which the console's Keys page calls too.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get, post, put
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery

from gateway import key_admin
from gateway.auth import store
from gateway.auth.principal import principal_of
from gateway.key_admin import KeyRequest, TeamLimits
from router.errors import InvalidRequest


def _decode(body: bytes, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(str(exc), code="invalid_type") from None
    except msgspec.DecodeError:
        raise InvalidRequest("The body must be a JSON object.", code="invalid_json") from None


@get("/admin/keys")
async def list_keys(request: Request[Any, Any, Any], state: State,
                    tenant: FromQuery[str | None] = None) -> dict[str, Any]:
    return {"keys": [k.as_dict() for k in await key_admin.list_keys(state.ctx, principal_of(request), tenant)]}


@post("/admin/keys", status_code=201, opt={"request_body": KeyRequest})  # the document: gateway/api/openapi.py
async def create_key(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    b: KeyRequest = _decode(await request.body(), KeyRequest)
    key, info = await key_admin.create_key(state.ctx, principal_of(request), b)
    return Response(msgspec.json.encode({"key": key, **info.as_dict()}), status_code=201,
                    media_type="application/json")


@post("/admin/keys/{key_id:str}/revoke", status_code=200)
async def revoke_key(key_id: FromPath[str], request: Request[Any, Any, Any], state: State) -> dict[str, Any]:
    return (await key_admin.revoke_key(state.ctx, principal_of(request), key_id)).as_dict()


@get("/admin/teams")
async def list_teams(request: Request[Any, Any, Any], state: State,
                     tenant: FromQuery[str | None] = None) -> dict[str, Any]:
    return {"teams": [t.as_dict() for t in await key_admin.list_teams(state.ctx, principal_of(request), tenant)]}


@put("/admin/teams/{tenant:str}/{team:str}", status_code=200, opt={"request_body": TeamLimits})
async def set_team(
    tenant: FromPath[str], team: FromPath[str], request: Request[Any, Any, Any], state: State
) -> dict[str, Any]:
    b: TeamLimits = _decode(await request.body(), TeamLimits)
    limits = await key_admin.set_team(state.ctx, principal_of(request), tenant, team, b)
    return {"tenant": tenant, "team": team, **store.limits_dict(limits)}


KEY_HANDLERS = [list_keys, create_key, revoke_key, list_teams, set_team]
