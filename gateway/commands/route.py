"""`gateway route explain`: how the routing policy decides one request body, and why."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import msgspec

from gateway.commands import config
from gateway.settings import Settings


def register(sub: Any) -> None:
    p = sub.add_parser("route", help="routing decisions")
    cmds = p.add_subparsers(dest="route_command", required=True, help="what to do")
    e = cmds.add_parser("explain", help="print the decision for a request body and its trace")
    e.add_argument("file", metavar="FILE|-", help="the JSON request body (- reads stdin)")
    config.add_config(e, "its policies_dir, prices_file and pools")
    config.add_policies(e)
    e.add_argument("--header", action="append", default=[], metavar="K=V", help="a request header (repeatable)")
    e.add_argument("--tenant", default="default", help="caller tenant (default: default)")
    e.add_argument("--team", help="caller team")
    e.add_argument("--key-id", help="caller API key id")
    e.add_argument("--model", help="requested model (default: the body's `model`, else auto)")
    e.add_argument("--kind", choices=("chat", "completion"), help="default: chat if the body has messages")
    e.add_argument("--unhealthy", action="append", default=[], metavar="POOL", help="treat POOL as unhealthy")
    e.add_argument("--load", action="append", default=[], metavar="POOL=X", help="POOL's load, 0..1 (default 0)")
    config.add_prices(e, "for expected costs")
    e.add_argument("--no-prices", action="store_true", help="decide without rates (tiers stand in for size)")
    e.add_argument("--json", action="store_true", help="print JSON instead of text")
    e.set_defaults(run=run_explain)


def _rates(args: argparse.Namespace, settings: Settings) -> tuple[dict[str, Any], str | None]:
    """Current per-token rates from the accounting price file, or none (with a note why)."""
    if args.no_prices:
        return {}, None
    from gateway.accounting.prices import current_token_rates, load_prices

    path = config.prices_file(args, settings)
    if args.prices is None and settings.prices_file is None and not path.exists():
        return {}, None
    try:
        return dict(current_token_rates(load_prices(path), datetime.now(UTC))), None
    except Exception as exc:  # the price file is the accounting's; report and carry on without it
        return {}, f"prices not used ({exc})"


def run_explain(args: argparse.Namespace) -> int:
    from router.classify import classify
    from router.decide import decide
    from router.decision import Caller, PoolState
    from router.errors import GatewayError, PolicyError
    from router.explain import explain_dict, explain_text
    from router.policy import load_policy_set
    from router.quality import probe_for

    settings = config.settings_or_none(args, "gateway route explain")
    if settings is None:
        return 2
    try:
        policy = load_policy_set(config.policy_dir(args, settings))
    except PolicyError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return 2
    try:
        raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
        body = msgspec.json.decode(raw)
    except (OSError, msgspec.DecodeError) as exc:
        print(f"gateway route explain: cannot read a JSON body from {args.file}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(body, dict):
        print("gateway route explain: the body must be a JSON object", file=sys.stderr)
        return 2
    headers: dict[str, str] = {}
    for item in args.header:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"gateway route explain: --header wants K=V, got {item!r}", file=sys.stderr)
            return 2
        headers[key.strip().lower()] = value.strip()
    health = {pool: PoolState(True, 0.0) for pool in policy.pools()}
    for pool in args.unhealthy:
        health[pool] = PoolState(False, health.get(pool, PoolState(True)).load)
    for item in args.load:
        pool, _, value = item.partition("=")
        try:
            health[pool] = PoolState(health.get(pool, PoolState(True)).healthy, float(value))
        except ValueError:
            print(f"gateway route explain: --load wants POOL=NUMBER, got {item!r}", file=sys.stderr)
            return 2
    kind: Literal["chat", "completion"] = args.kind or ("completion" if "prompt" in body and "messages" not in body
                                                         else "chat")
    requested = args.model or (body.get("model") if isinstance(body.get("model"), str) else None) or "auto"
    caller = Caller(tenant=args.tenant, team=args.team, key_id=args.key_id)
    rates, note = _rates(args, settings)

    features = classify(body, kind, headers, policy.classifier)
    probe = probe_for(policy.predictor, body, features)
    decision = None
    error = None
    try:
        decision = decide(features, caller, requested, policy, health, rates, probe)
    except GatewayError as exc:
        error = exc
    if args.json:
        out = explain_dict(policy, features, caller, requested, decision, error, probe)
        if note:
            out["note"] = note
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(out).decode(), indent=2) + "\n")
    else:
        if note:
            print(f"note: {note}")
        print(explain_text(policy, features, caller, requested, decision, error, probe))
    return 0 if error is None else 1
