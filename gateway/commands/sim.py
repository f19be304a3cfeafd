"""`gateway sim`: a vLLM simulator (a fake engine for demos, tests and benchmarks).

Every argument after `sim` (--help included) belongs to the simulator's own command line (vllm_sim.cli):
gateway/cli.py hands them to :func:`main`; :func:`register` only lists `sim` in `gateway --help`.
"""

from __future__ import annotations

from typing import Any

PROG = "gateway sim"


def register(sub: Any) -> None:
    sub.add_parser("sim", help="run a vLLM *simulator* (fake engine; see `gateway sim --help`)", add_help=False)


def main(argv: list[str]) -> int:
    """Run the simulator with ``argv`` (the arguments after `sim`); returns the exit code."""
    from vllm_sim.cli import main as sim_main  # its app and tokenizer: only for `gateway sim`

    return sim_main(argv, prog=PROG)
