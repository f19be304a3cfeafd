"""The settings options the commands share, and what they resolve to.

Every command reads the same settings as `gateway serve`: defaults, then `--config FILE` (else
$GATEWAY_CONFIG), then GATEWAY_* variables. The commands that read routing policies take the policy
directory from those settings (`policies_dir`, else the shipped policies/) unless `--policies` names one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.settings import Settings, SettingsError, load_settings

CONFIG_HELP = "YAML settings file, as `gateway serve` reads it (default: $GATEWAY_CONFIG; GATEWAY_* variables " \
              "override it)"


def add_config(p: argparse.ArgumentParser, also: str = "") -> None:
    """`--config FILE`; `also` says what else the command reads from the settings."""
    p.add_argument("--config", metavar="FILE", help=CONFIG_HELP + (f"; {also}" if also else ""))


def add_database_url(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", metavar="URL", help="overrides the settings' database_url")


def add_policies(p: argparse.ArgumentParser, what: str = "policy directory") -> None:
    """`--policies DIR`, over the settings' policies_dir."""
    p.add_argument("--policies", metavar="DIR", type=Path,
                   help=f"{what} (default: the settings' policies_dir, else the shipped policies/)")


def add_prices(p: argparse.ArgumentParser, what: str) -> None:
    """`--prices FILE`, over the settings' prices_file."""
    p.add_argument("--prices", metavar="FILE", type=Path,
                   help=f"price file {what} (default: the settings' prices_file, else the shipped "
                   "policies/prices.yaml)")


def settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    """The settings of `--config` (raises SettingsError); `overrides` (None: not given) win over them."""
    return load_settings(args.config, overrides=overrides)


def settings_or_none(args: argparse.Namespace, prog: str, **overrides: Any) -> Settings | None:
    """The settings, or None once the reason is on stderr as `prog: problem` (the command exits 2)."""
    try:
        return settings(args, **overrides)
    except SettingsError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None


def policy_dir(args: argparse.Namespace, settings: Settings) -> Path:
    """`--policies`, else the settings' policies_dir, else the shipped policies/ (what `gateway serve` loads)."""
    from gateway.routing import policy_directory

    chosen = getattr(args, "policies", None)
    return Path(chosen) if chosen else policy_directory(settings.policies_dir)


def prices_file(args: argparse.Namespace, settings: Settings) -> Path:
    """`--prices`, else the settings' prices_file, else the shipped price file (what the accounting uses)."""
    from gateway.accounting.prices import DEFAULT_PRICES_FILE

    return Path(getattr(args, "prices", None) or settings.prices_file or DEFAULT_PRICES_FILE)
