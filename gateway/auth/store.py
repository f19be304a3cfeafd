"""Keys and team limits in SQL: create, list, revoke, expire, set team limits, and the gateway's lookup."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Table, delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting.money import quantize
from gateway.auth import keys
from gateway.auth.keys import digest, key_prefix, new_key, new_key_id
from gateway.auth.models import ApiKey, TeamLimits
from gateway.auth.principal import PERIODS, ROLES, SCOPES, Limits, Principal, Scope
from gateway.settings import Settings

KEYS: Table = ApiKey.__table__  # type: ignore[assignment]
TEAMS: Table = TeamLimits.__table__  # type: ignore[assignment]
MAX_BUDGET = Decimal(900_000_000)  # budgets are counted in 10^-10 units in 64-bit integers (limits/)
MAX_NAME = 128


class KeyProblem(ValueError):
    """A key operation asked for wrongly; the message says what to change."""


@dataclass(frozen=True)
class KeyInfo:
    """A key as lists show it (never the key, never its hash)."""

    id: str
    prefix: str
    name: str | None
    tenant: str
    team: str
    role: str
    scope: str  # tenant | all (gateway/auth/scope.py)
    created_at: datetime | None  # None: not known (a development key given in the settings)
    expires_at: datetime | None
    revoked_at: datetime | None
    limits: Limits
    development: bool = False  # the development key (kept in a file or the settings, not in the database)

    def state(self, now: datetime | None = None) -> str:
        now = now or datetime.now(UTC)
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and _aware(self.expires_at) <= now:
            return "expired"
        return "active"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "prefix": self.prefix, "name": self.name, "tenant": self.tenant, "team": self.team,
            "role": self.role, "scope": self.scope, "state": self.state(), "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at), "revoked_at": _iso(self.revoked_at),
            **limits_dict(self.limits), "development": self.development,
        }


def limits_dict(limits: Limits) -> dict[str, Any]:
    return {"rpm": limits.rpm, "tpm": limits.tpm,
            "budget": format(limits.budget, "f") if limits.budget is not None else None,
            "budget_period": limits.budget_period if limits.budget is not None else None}


def _iso(value: datetime | None) -> str | None:
    return _aware(value).isoformat() if value is not None else None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)  # SQLite returns naive UTC


def check_limits(rpm: int | None, tpm: int | None, budget: Decimal | None, period: str | None) -> Limits:
    if rpm is not None and rpm < 1:
        raise KeyProblem("rpm must be >= 1 request per minute")
    if tpm is not None and tpm < 1:
        raise KeyProblem("tpm must be >= 1 token per minute")
    if budget is not None:
        if not budget.is_finite() or budget < 0 or budget > MAX_BUDGET:
            raise KeyProblem(f"budget must be an amount from 0 to {MAX_BUDGET}")
        budget = quantize(budget)
    if period is not None and period not in PERIODS:
        raise KeyProblem(f"budget period `{period}` is not one of {', '.join(PERIODS)}")
    return Limits(rpm=rpm, tpm=tpm, budget=budget, budget_period=period or "month")


def check_name(what: str, value: str) -> None:
    """A tenant's or team's name: 1-MAX_NAME printable characters without `:`; KeyProblem otherwise."""
    if not value or len(value) > MAX_NAME or not value.isprintable() or ":" in value:
        raise KeyProblem(f"{what} must be 1-{MAX_NAME} printable characters without `:`")


def _check_names(tenant: str, team: str) -> None:
    check_name("tenant", tenant)
    check_name("team", team)


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(
        id=row.id, prefix=row.prefix, name=row.name, tenant=row.tenant, team=row.team, role=row.role,
        scope=row.scope,
        created_at=_aware(row.created_at), expires_at=_aware(row.expires_at) if row.expires_at else None,
        revoked_at=_aware(row.revoked_at) if row.revoked_at else None,
        limits=Limits(rpm=row.rpm, tpm=row.tpm, budget=row.budget,
                      budget_period=row.budget_period or "month"),  # type: ignore[arg-type]
    )


async def create_key(
    engine: AsyncEngine, secret: bytes, *, tenant: str, team: str, role: str, scope: str = "tenant",
    name: str | None = None, expires_at: datetime | None = None, limits: Limits | None = None,
) -> tuple[str, KeyInfo]:
    """A new key: (the key, to show once; what is stored about it)."""
    _check_names(tenant, team)
    if role not in ROLES:
        raise KeyProblem(f"role `{role}` is not one of {', '.join(ROLES)}")
    if scope not in SCOPES:
        raise KeyProblem(f"scope `{scope}` is not one of {', '.join(SCOPES)}")
    if expires_at is not None and expires_at.tzinfo is None:
        raise KeyProblem("expires_at must carry a time zone")
    limits = limits or Limits()
    key = new_key()
    row = ApiKey(
        id=new_key_id(), prefix=key_prefix(key), key_hash=digest(secret, key).hex(), name=name, tenant=tenant,
        team=team, role=role, scope=scope, created_at=datetime.now(UTC), expires_at=expires_at, revoked_at=None,
        rpm=limits.rpm, tpm=limits.tpm, budget=limits.budget,
        budget_period=limits.budget_period if limits.budget is not None else None,
    )
    async with engine.begin() as conn:
        await conn.execute(KEYS.insert().values(_values(row)))
    return key, _info(row)


def _values(row: Any) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in row.__table__.columns}


def dev_key_info(settings: Settings) -> KeyInfo | None:
    """The development key as lists show it, if the gateway has one (it never makes one here)."""
    dev = keys.dev_key(settings, create=False)
    if dev is None:
        return None
    created = None
    if dev.source != "setting":
        with contextlib.suppress(OSError):
            created = datetime.fromtimestamp(Path(dev.source).stat().st_mtime, UTC)
    return KeyInfo(id=keys.DEV_KEY_ID, prefix=keys.shown_prefix(dev.key), name=f"development key ({dev.source})",
                   tenant=keys.DEV_TENANT, team=keys.DEV_TEAM, role=keys.DEV_ROLE, scope=keys.DEV_SCOPE,
                   created_at=created,
                   expires_at=None, revoked_at=None, limits=Limits(), development=True)


async def list_keys(engine: AsyncEngine, tenant: str | None = None) -> list[KeyInfo]:
    stmt = select(ApiKey).order_by(ApiKey.tenant, ApiKey.team, ApiKey.created_at)
    if tenant is not None:
        stmt = stmt.where(ApiKey.tenant == tenant)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [_info(ApiKey(**row._mapping)) for row in rows]


async def _find(engine: AsyncEngine, ident: str, tenant: str | None = None) -> KeyInfo:
    """A key by its id, or by its prefix when that is unambiguous; with `tenant`, only that tenant's keys
    (another tenant's key is not found, as one that does not exist)."""
    within = select(ApiKey) if tenant is None else select(ApiKey).where(ApiKey.tenant == tenant)
    async with engine.connect() as conn:
        rows = (await conn.execute(within.where(ApiKey.id == ident))).all()
        if not rows and ident.startswith("sk-"):
            rows = (await conn.execute(within.where(ApiKey.prefix == key_prefix(ident)))).all()
    if not rows:
        raise KeyProblem(f"no key `{ident}` (give its id, key_..., from `gateway keys list`)")
    if len(rows) > 1:
        raise KeyProblem(f"`{ident}` matches {len(rows)} keys; give the id")
    return _info(ApiKey(**rows[0]._mapping))


async def revoke_key(engine: AsyncEngine, ident: str, tenant: str | None = None) -> KeyInfo:
    """Revoke a key (`tenant`: only one of that tenant's; KeyProblem for any other)."""
    info = await _find(engine, ident, tenant)
    if info.revoked_at is None:
        async with engine.begin() as conn:
            await conn.execute(update(ApiKey).where(ApiKey.id == info.id, ApiKey.revoked_at.is_(None))
                               .values(revoked_at=datetime.now(UTC)))
    return await _find(engine, info.id)


async def expire_key(engine: AsyncEngine, ident: str, at: datetime | None = None) -> KeyInfo:
    info = await _find(engine, ident)
    async with engine.begin() as conn:
        await conn.execute(update(ApiKey).where(ApiKey.id == info.id).values(expires_at=at or datetime.now(UTC)))
    return await _find(engine, info.id)


@dataclass(frozen=True)
class TeamInfo:
    tenant: str
    team: str
    limits: Limits
    updated_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "team": self.team, **limits_dict(self.limits),
                "updated_at": _iso(self.updated_at)}


async def set_team_limits(engine: AsyncEngine, tenant: str, team: str, limits: Limits | None) -> None:
    """Set a team's limits (all of them at once); None removes them."""
    _check_names(tenant, team)
    async with engine.begin() as conn:
        await conn.execute(delete(TeamLimits).where(TeamLimits.tenant == tenant, TeamLimits.team == team))
        if limits is not None and limits.any:
            await conn.execute(TEAMS.insert().values(
                tenant=tenant, team=team, rpm=limits.rpm, tpm=limits.tpm, budget=limits.budget,
                budget_period=limits.budget_period if limits.budget is not None else None,
                updated_at=datetime.now(UTC)))


async def list_team_limits(engine: AsyncEngine, tenant: str | None = None) -> list[TeamInfo]:
    stmt = select(TeamLimits).order_by(TeamLimits.tenant, TeamLimits.team)
    if tenant is not None:
        stmt = stmt.where(TeamLimits.tenant == tenant)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [TeamInfo(r.tenant, r.team, _team_limits(r), _aware(r.updated_at)) for r in rows]


def _team_limits(r: Any) -> Limits:
    if r is None:
        return Limits()
    return Limits(rpm=r.rpm, tpm=r.tpm, budget=r.budget, budget_period=r.budget_period or "month")


# --- the gateway's lookup ------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """What a key hash resolves to: a principal, or why not."""

    principal: Principal | None
    problem: str | None = None  # "unknown" | "revoked" | "expired"


def _key_rows() -> Any:
    """Keys with their team's limits: what authentication needs of each."""
    k, t = KEYS.c, TEAMS.c
    return (
        select(k.key_hash, k.id, k.tenant, k.team, k.role, k.scope, k.expires_at, k.revoked_at, k.rpm, k.tpm, k.budget,
               k.budget_period, t.rpm.label("t_rpm"), t.tpm.label("t_tpm"), t.budget.label("t_budget"),
               t.budget_period.label("t_budget_period"), t.tenant.label("t_tenant"))
        .select_from(KEYS.outerjoin(TEAMS, (t.tenant == k.tenant) & (t.team == k.team)))
    )


KEY_ROWS = _key_rows()


def resolve(row: Any, now: datetime) -> Found:
    """What a key's row (of `lookup` or `all_keys`) resolves to at `now`."""
    if row.revoked_at is not None:
        return Found(None, "revoked")
    expires = _aware(row.expires_at) if row.expires_at is not None else None
    if expires is not None and expires <= now:
        return Found(None, "expired")
    team = Limits(rpm=row.t_rpm, tpm=row.t_tpm, budget=row.t_budget,
                  budget_period=row.t_budget_period or "month") if row.t_tenant is not None else Limits()
    return Found(Principal(
        tenant=row.tenant, team=row.team, key_id=row.id, role=row.role, scope=_scope(row.scope),
        key_limits=Limits(rpm=row.rpm, tpm=row.tpm, budget=row.budget, budget_period=row.budget_period or "month"),
        team_limits=team, expires_at=expires.timestamp() if expires is not None else None,
    ))


def _scope(value: str | None) -> Scope:
    """A stored scope; anything but `all` reads as `tenant` (the narrower)."""
    return "all" if value == "all" else "tenant"


async def lookup(engine: AsyncEngine, key_hash: str, now: datetime) -> Found:
    """One query: the key and its team's limits."""
    async with engine.connect() as conn:
        row = (await conn.execute(KEY_ROWS.where(KEYS.c.key_hash == key_hash))).first()
    return Found(None, "unknown") if row is None else resolve(row, now)


async def all_keys(engine: AsyncEngine) -> list[Any]:
    """Every key, as `lookup` reads one (`row.key_hash`: its stored hash; `resolve(row, now)`)."""
    async with engine.connect() as conn:
        return list((await conn.execute(KEY_ROWS)).all())


async def budgets(engine: AsyncEngine, tenant: str | None = None) -> tuple[list[KeyInfo], list[TeamInfo]]:
    """Keys (not revoked) and teams that have a budget (`tenant`: only that tenant's)."""
    keys = [k for k in await list_keys(engine, tenant) if k.limits.budget is not None and k.revoked_at is None]
    teams = [t for t in await list_team_limits(engine, tenant) if t.limits.budget is not None]
    return keys, teams

