"""`gateway sim`: a vLLM simulator (a fake engine for demos, tests and benchmarks).

gateway/cli.py hands every argument after `sim` to vllm_sim; this only lists it in --help.
"""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    sub.add_parser("sim", help="run a vLLM *simulator* (fake engine; see `gateway sim --help`)", add_help=False)
