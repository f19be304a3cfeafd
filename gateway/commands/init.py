"""`gateway init DIR | --from-pools`: a starting policy directory.

`gateway init DIR` copies the shipped policies and writes a commented settings file (gateway/commands/starter.py).
With `--from-pools`, the policy is made for the configured pools: each pool's workers are asked for their
/v1/models (the model's `max_model_len` becomes its context window); a pool whose replicas the gateway
launches, and which are not running, is read from its launch spec (`--max-model-len`). The result is checked
as `gateway serve` would load it before anything is written, and no existing file is replaced without `--force`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.commands import config
from gateway.settings import PoolConfig, Settings

FILES = ("models.yaml", "routing.yaml", "classify.yaml")
# What vLLM serves without extra flags; tools need --enable-auto-tool-choice, vision and audio a model that has them.
CAPABILITIES = ("json_schema", "json_object", "logprobs", "n")

MODELS_HEAD = """\
# The model catalogue, written by `gateway init --from-pools` from the gateway's pools: review it.
# context_window is vLLM's max_model_len, as each pool's workers told it. Every tier is 1: give the better
# models a higher one (rules may require a minimum). capabilities are what vLLM serves by default: add
# `tools` where a worker runs with --enable-auto-tool-choice, `vision` or `audio` where its model takes them.
# Prices are not here: the price file (the settings' prices_file) holds them.
# docs/routing-policies.md describes every field.

models:
"""

ROUTING = """\
# Routing rules, written by `gateway init --from-pools`. A client naming a model (or an alias) gets it;
# `auto`, or no model, gets the cheapest model that can serve the request: by the price file's prices,
# else the lowest tier, then the least loaded pool. docs/routing-policies.md describes the rules to add.

defaults:
  cache: {ttl_s: 600, when: deterministic}   # cache deterministic requests (temperature 0 or a seed)

rules:
  - name: honour-requested
    description: A client naming a model or an alias gets it, if it can serve the request.
    match: {requested: [model, alias]}
    route: requested
"""


@dataclass(frozen=True)
class Found:
    """What one pool's workers said (or its launch spec): the model's window and where it came from."""

    pool: PoolConfig
    window: int | None
    source: str
    root: str | None = None
    warning: str | None = None


def register(sub: Any) -> None:
    p = sub.add_parser("init", help="write a starting policy directory (DIR: the shipped one; or --from-pools)",
                       description="Write a starting routing policy. `gateway init DIR` copies the shipped "
                       "policies into DIR/policies and writes a commented DIR/gateway.yaml using them; with "
                       "--from-pools, a policy for the configured pools is made, each pool's workers asked for "
                       "/v1/models.")
    p.add_argument("directory", metavar="DIR", nargs="?", type=Path,
                   help="where the copy of the shipped policies (DIR/policies) and DIR/gateway.yaml go")
    p.add_argument("--from-pools", action="store_true",
                   help="one catalogue entry per configured pool, its context window from the workers' /v1/models")
    config.add_config(p, "its pools, and policies_dir (where to write)")
    p.add_argument("--policies", metavar="DIR", type=Path,
                   help="the directory to write (default: the settings' policies_dir, else ./policies)")
    p.add_argument("--context-window", metavar="TOKENS", type=int,
                   help="the window of a model whose workers cannot be asked (default: stop and say which)")
    p.add_argument("--timeout", metavar="S", type=float, default=5.0, help="per worker (default 5 s)")
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.set_defaults(run=run_init)


def run_init(args: argparse.Namespace) -> int:
    if (args.directory is None) == (not args.from_pools):
        print("gateway init: give one of DIR (a copy of the shipped policies) and --from-pools (a policy for "
              "the configured pools)", file=sys.stderr)
        return 2
    if args.directory is not None:
        from gateway.commands import starter
        from router.policy import default_policy_dir

        return starter.write(args.directory, default_policy_dir(), args.force)
    settings = config.settings_or_none(args, "gateway init")
    if settings is None:
        return 2
    if args.context_window is not None and args.context_window < 1:
        print("gateway init: --context-window must be >= 1", file=sys.stderr)
        return 2
    out = Path(args.policies or settings.policies_dir or "policies")
    existing = [out / name for name in FILES if (out / name).exists()]
    if existing and not args.force:
        names = ", ".join(str(p) for p in existing)
        print(f"gateway init: {names} already exist{'s' if len(existing) == 1 else ''}; nothing written "
              "(--force replaces them, or --policies names another directory)", file=sys.stderr)
        return 1
    found = [ask_pool(pool, args.timeout) for pool in settings.pools]
    missing = [f for f in found if f.window is None]
    for f in found:
        if f.warning:
            print(f"warning: pool `{f.pool.name}`: {f.warning}", file=sys.stderr)
    if missing and args.context_window is None:
        for f in missing:
            print(f"gateway init: pool `{f.pool.name}` ({f.pool.model}): {f.source}", file=sys.stderr)
        print("gateway init: nothing written; start those workers, or give --context-window TOKENS for their "
              "models", file=sys.stderr)
        return 1
    models = models_yaml(found, args.context_window)
    texts = {"models.yaml": models, "routing.yaml": ROUTING, "classify.yaml": shipped_classifier()}
    problems = check(texts, settings)
    if problems:  # what this command writes always loads; a problem here is the command's own
        print("gateway init: the policy it made does not load:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (out / name).write_text(text)
    for f in found:
        window = f.window if f.window is not None else args.context_window
        told = f"from {f.source}" if f.window is not None else f"from --context-window: {f.source}"
        print(f"{f.pool.model}: pool {f.pool.name}, context window {window:,} ({told})")
    print(f"wrote {', '.join(str(out / n) for n in FILES)}")
    print("next: review the tiers and capabilities in models.yaml; set `policies_dir: " f"{out}` in the settings; "
          f"`gateway policies check --policies {out}`")
    return 0


def ask_pool(pool: PoolConfig, timeout: float) -> Found:
    """The pool's model window: from the first replica that answers /v1/models, else from its launch spec."""
    import httpx

    headers = {"authorization": f"Bearer {pool.api_key}"} if pool.api_key else {}
    tried: list[str] = []
    warning = None
    for url in pool.replicas:
        where = f"{url.rstrip('/')}/v1/models"
        try:
            response = httpx.get(where, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            tried.append(f"{where}: {type(exc).__name__}")
            continue
        if response.status_code != 200:
            tried.append(f"{where}: HTTP {response.status_code}")
            continue
        entries = _entries(response)
        card = next((e for e in entries if e.get("id") == pool.model), None)
        if card is None:
            ids = ", ".join(str(e.get("id")) for e in entries) or "nothing"
            warning = (f"{where} lists {ids}, not `{pool.model}`; set the pool's `model` to the name the worker "
                       "serves (vLLM's --served-model-name)")
            tried.append(f"{where}: does not list it")
            continue
        window = card.get("max_model_len")
        if isinstance(window, int) and not isinstance(window, bool) and window > 0:
            root = card.get("root")
            return Found(pool, window, where, root if isinstance(root, str) else None)
        tried.append(f"{where}: no max_model_len")
    if pool.launch is not None:
        window, told = launch_window(pool)
        if window is not None:
            return Found(pool, window, told, warning=warning)
        tried.append(told)
    return Found(pool, None, "; ".join(tried) or "no replicas to ask", warning=warning)


def _entries(response: Any) -> list[dict[str, Any]]:
    try:
        data = response.json().get("data")
    except (ValueError, AttributeError):
        return []
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []


def launch_window(pool: PoolConfig) -> tuple[int | None, str]:
    """`--max-model-len` from a launch spec's args (the simulator's default without it), and where it came from."""
    assert pool.launch is not None
    args = list(pool.launch.args)
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--max-model-len=") else (
            args[i + 1] if arg == "--max-model-len" and i + 1 < len(args) else None)
        if value is not None:
            if value.isdigit() and int(value) > 0:
                return int(value), "--max-model-len in its launch args"
            return None, f"launch args: --max-model-len {value!r} is not a number of tokens"
    if pool.launch.engine == "sim":
        from vllm_sim.config import SimConfig

        return SimConfig().max_model_len, "the simulator's default max_model_len"
    return None, "launch args: no --max-model-len (vLLM reads it from the model's config)"


def _scalar(value: str) -> str:
    """`value` as a YAML scalar: plain when it reads back as itself, else quoted."""
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_./:@+-]*", value) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value)


def models_yaml(found: list[Found], default_window: int | None) -> str:
    lines = [MODELS_HEAD]
    for f in found:
        window = f.window if f.window is not None else default_window
        told = f"max_model_len {f.window:,} from {f.source}" if f.window is not None else \
            f"context_window from --context-window, not from a worker ({f.source}): check it"
        if f.root and f.root != f.pool.model:
            told += f"; weights {f.root}"
        lines.append(
            f"  - name: {_scalar(f.pool.model)}\n"
            f"    description: {json.dumps(f'Served by pool {f.pool.name}; {told}.')}\n"
            f"    pool: {_scalar(f.pool.name)}\n"
            f"    context_window: {window}\n"
            "    tier: 1\n"
            f"    capabilities: [{', '.join(CAPABILITIES)}]\n\n"
        )
    return "".join(lines).rstrip("\n") + "\n"


def shipped_classifier() -> str:
    """The shipped classify.yaml: token estimation, output hints, categories and tiers (no model in it)."""
    from router.policy import default_policy_dir

    return (default_policy_dir() / "classify.yaml").read_text()


def check(texts: dict[str, str], settings: Settings) -> list[str]:
    """Problems of the policy `texts` make, loaded as `gateway serve` loads it (none expected)."""
    from router.policy import read_policy_set

    with tempfile.TemporaryDirectory(prefix="gateway-init-") as tmp:
        for name, text in texts.items():
            (Path(tmp) / name).write_text(text)
        policy, problems = read_policy_set(tmp)
        if policy is None:
            return problems
        return policy.check_pools(p.name for p in settings.pools)
