"""`gateway keys`: API keys and team limits, in the gateway's database.

    gateway keys create --tenant T --team X --role app|finance|admin [--scope tenant|all] [--name N]
                        [--expires WHEN] [--rpm N] [--tpm N] [--budget AMOUNT] [--budget-period day|month|total]
    gateway keys list [--tenant T] [--format table|json]
    gateway keys revoke KEY_ID
    gateway keys expire KEY_ID [--at WHEN]
    gateway keys team --tenant T --team X [--rpm N] [--tpm N] [--budget AMOUNT] [--budget-period P] | --clear
    gateway keys teams [--tenant T] [--format table|json]

`create` prints the key once on stdout (details on stderr); the database keeps only its keyed hash.
`--scope`: which tenants a finance or admin key sees: its own (`tenant`, the default) or every one (`all`).
WHEN is a date (2027-01-31, midnight UTC), an ISO 8601 time, or a duration from now (90m, 12h, 30d).
`revoke` and `expire` also tell running gateways through Redis when `redis_url` is set; otherwise
they notice within `auth_cache_ttl_s`. Same settings as `gateway serve` (--config, $GATEWAY_CONFIG,
GATEWAY_*); with none, the embedded database in .gateway/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from gateway.commands import config
from gateway.durations import parse_duration
from gateway.settings import SettingsError
from router.pricing import format_money


def parse_when(text: str, now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    if (duration := parse_duration(text)) is not None:
        return now + duration
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"`{text}` is not a date, an ISO 8601 time or a duration such as 30d") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _amount(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        raise ValueError(f"budget `{text}` is not an amount") from None


def _common(p: argparse.ArgumentParser) -> None:
    config.add_config(p, "its database_url and state_dir (the key-hash secret, the development key)")
    config.add_database_url(p)


def _limit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rpm", type=_per_minute, help="requests per minute")
    p.add_argument("--tpm", type=_per_minute, help="tokens per minute (prompt + completion)")
    p.add_argument("--budget", help="spend allowed per period, in the price catalogue's currency (e.g. 25.00)")
    p.add_argument("--budget-period", choices=("day", "month", "total"), help="the budget's period (default: month)")


def _per_minute(text: str) -> int:
    """A positive count that fits the database's INTEGER column."""
    value = int(text)
    if not 1 <= value <= 2**31 - 1:
        raise argparse.ArgumentTypeError(f"must be between 1 and {2**31 - 1}")
    return value


def register(sub: Any) -> None:
    p = sub.add_parser("keys", help="API keys (create, list, revoke, expire) and team limits")
    actions = p.add_subparsers(dest="action", required=True, help="what to do")
    create = actions.add_parser("create", help="make a key; prints it once")
    create.add_argument("--tenant", required=True, help="the tenant the key's calls are accounted to")
    create.add_argument("--team", required=True, help="the team within the tenant (team limits apply to it)")
    create.add_argument("--role", required=True, choices=("app", "finance", "admin"),
                        help="app: inference and feedback; finance: also the reports; admin: everything")
    create.add_argument("--scope", choices=("tenant", "all"), default="tenant",
                        help="the tenants its reports and admin calls reach: its own (default) or all of them")
    create.add_argument("--name", help="a label for lists")
    create.add_argument("--expires", metavar="WHEN", help="a date, an ISO 8601 time or a duration (30d)")
    _limit_args(create)
    listing = actions.add_parser("list", help="the keys (prefix only), the development key among them")
    listing.add_argument("--tenant", help="only this tenant's keys")
    _format(listing)
    revoke = actions.add_parser("revoke", help="revoke a key (it stops working within seconds)")
    revoke.add_argument("key", metavar="KEY_ID", help="the key's id (key_...) or the key itself")
    expire = actions.add_parser("expire", help="set when a key expires (default: now)")
    expire.add_argument("key", metavar="KEY_ID", help="the key's id (key_...) or the key itself")
    expire.add_argument("--at", metavar="WHEN", help="a date, an ISO 8601 time or a duration (default: now)")
    team = actions.add_parser("team", help="set a team's rate limits and budget (all at once)")
    team.add_argument("--tenant", required=True, help="the team's tenant")
    team.add_argument("--team", required=True, help="the team")
    _limit_args(team)
    team.add_argument("--clear", action="store_true", help="remove the team's limits")
    teams = actions.add_parser("teams", help="the teams' limits")
    teams.add_argument("--tenant", help="only this tenant's teams")
    _format(teams)
    for a in (create, listing, revoke, expire, team, teams):
        _common(a)
    p.set_defaults(run=run)


def _format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")


def run(args: argparse.Namespace) -> int:
    from gateway.accounting.db import DatabaseError
    from gateway.auth.store import KeyProblem

    try:
        settings = config.settings(args, database_url=args.database_url)
        return asyncio.run(_run(settings, args))
    except (SettingsError, DatabaseError, KeyProblem, ValueError) as exc:
        print(f"gateway keys: {exc}", file=sys.stderr)
        return 2


async def _run(settings: Any, args: argparse.Namespace) -> int:
    from gateway.accounting import auto_migrate, database_url, db

    url = database_url(settings)

    async def work(engine: Any) -> int:
        await db.prepare(engine, url, auto_migrate(settings))
        return await _act(settings, engine, args)

    return await db.run_command("gateway keys", url, work)


async def _act(settings: Any, engine: Any, args: argparse.Namespace) -> int:
    from gateway.auth import store
    from gateway.auth.keys import server_secret

    if args.action == "create":
        limits = store.check_limits(args.rpm, args.tpm, _amount(args.budget), args.budget_period)
        expires = parse_when(args.expires) if args.expires else None
        key, info = await store.create_key(engine, server_secret(settings), tenant=args.tenant, team=args.team,
                                           role=args.role, scope=args.scope, name=args.name, expires_at=expires,
                                           limits=limits)
        print(key)
        print(f"created {info.id} ({info.prefix}...): tenant {info.tenant}, team {info.team}, role {info.role}, "
              f"scope {info.scope}, "
              f"expires {info.expires_at.isoformat() if info.expires_at else 'never'}{_limits_text(info.limits)}. "
              "The key is shown this once; the gateway keeps only a keyed hash.", file=sys.stderr)
        return 0
    if args.action == "list":
        dev = store.dev_key_info(settings)
        keys = [dev] if dev is not None and args.tenant in (None, dev.tenant) else []
        keys += await store.list_keys(engine, args.tenant)
        if args.format == "json":
            print(json.dumps([k.as_dict() for k in keys], indent=1))
        else:
            print(_table(["id", "prefix", "tenant", "team", "role", "scope", "state", "created", "expires", "limits",
                          "name"],
                         [[k.id, k.prefix + "...", k.tenant, k.team, k.role, k.scope, k.state(),
                           _day(k.created_at) if k.created_at else "-", _day(k.expires_at),
                           _limits_text(k.limits).lstrip(", ") or "-", k.name or "-"]
                          for k in keys]))
        return 0
    if args.action in ("revoke", "expire"):
        if args.action == "revoke":
            info = await store.revoke_key(engine, args.key)
        else:
            info = await store.expire_key(engine, args.key, parse_when(args.at) if args.at else None)
        await _tell_gateways(settings, info.id)
        when = info.revoked_at if args.action == "revoke" else info.expires_at
        print(f"{info.id} ({info.prefix}...): {info.state()}" + (f" since {when.isoformat()}" if when else ""))
        return 0
    if args.action == "team":
        if args.clear:
            await store.set_team_limits(engine, args.tenant, args.team, None)
            print(f"team {args.tenant}/{args.team}: no limits")
            return 0
        limits = store.check_limits(args.rpm, args.tpm, _amount(args.budget), args.budget_period)
        if not limits.any:
            raise ValueError("give --rpm, --tpm and/or --budget (or --clear)")
        await store.set_team_limits(engine, args.tenant, args.team, limits)
        print(f"team {args.tenant}/{args.team}:{_limits_text(limits).lstrip(',')} "
              f"(gateways apply it within auth_cache_ttl_s)")
        return 0
    if args.action == "teams":
        teams = await store.list_team_limits(engine, args.tenant)
        if args.format == "json":
            print(json.dumps([t.as_dict() for t in teams], indent=1))
        else:
            print(_table(["tenant", "team", "limits", "updated"],
                         [[t.tenant, t.team, _limits_text(t.limits).lstrip(", "), _day(t.updated_at)] for t in teams]))
        return 0
    raise AssertionError(args.action)


async def _tell_gateways(settings: Any, key_id: str) -> None:
    if not settings.redis_url:
        return
    from redis.asyncio import Redis

    from gateway.auth.service import publish_revocation

    redis = Redis.from_url(settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        await publish_revocation(redis, key_id)
    finally:
        await redis.aclose()


def _limits_text(limits: Any) -> str:
    parts = []
    if limits.rpm is not None:
        parts.append(f"{limits.rpm} rpm")
    if limits.tpm is not None:
        parts.append(f"{limits.tpm} tpm")
    if limits.budget is not None:
        amount = format_money(limits.budget)
        parts.append(f"budget {amount} per {limits.budget_period}" if limits.budget_period != "total"
                     else f"budget {amount} in total")
    return (", " + ", ".join(parts)) if parts else ""


def _day(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "never"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(x) for x in col) for col in zip(headers, *rows, strict=True)]

    def fmt(values: list[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    lines = [fmt(headers), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]
    if not rows:
        lines.append("(none)")
    return "\n".join(lines)
