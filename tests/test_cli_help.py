"""`gateway --help` and every subcommand's: each argument says what it is for."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from gateway.cli import build_parser

pytestmark = pytest.mark.pure


def parsers(parser: argparse.ArgumentParser, path: str = "gateway") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """The parser and every nested subcommand's, with the command line that reaches it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, f"{path} {name}")


def test_every_argument_of_every_command_has_help() -> None:
    found = list(parsers(build_parser()))
    assert {"gateway keys create", "gateway router train", "gateway policies check", "gateway db upgrade"} \
        <= {path for path, _ in found}
    missing = [f"{path}: {'/'.join(action.option_strings) or action.dest}"
               for path, parser in found for action in parser._actions if not action.help]
    assert missing == []


def test_every_command_that_reads_settings_takes_the_same_config_option() -> None:
    helps = {action.help for _, parser in parsers(build_parser()) for action in parser._actions
             if "--config" in action.option_strings}
    assert len(helps) > 1  # one text, each command adding what it reads
    assert all(h and h.startswith("YAML settings file, as `gateway serve` reads it (default: $GATEWAY_CONFIG")
               for h in helps)
