"""The `gateway` command: one subcommand per module in gateway/commands/."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

# Each module has `register(subparsers)`, which adds its parser with `set_defaults(run=...)`.
COMMANDS = ("serve", "sim", "workers", "db", "keys", "report", "policies", "route", "router", "init")


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
    try:
        return int(args.run(args))
    except BrokenPipeError:
        # The reader left (`gateway ... | head`): stop quietly, as a command killed by SIGPIPE would,
        # with stdout pointed at /dev/null so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    raise SystemExit(main())
