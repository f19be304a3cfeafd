"""The `gateway` command: one subcommand per module in gateway/commands/."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module has `register(subparsers)`, which adds its parser with `set_defaults(run=...)`.
COMMANDS = ("serve", "sim", "workers", "db", "keys", "report", "policies", "route", "router")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="LLM routing gateway with cost accounting")
    sub = parser.add_subparsers(dest="command", required=True, help="`gateway COMMAND --help` shows its options")
    for name in COMMANDS:
        importlib.import_module(f"gateway.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sim"]:  # everything after `sim` (--help included) belongs to the simulator
        from gateway.commands.sim import main as sim_main

        return sim_main(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
