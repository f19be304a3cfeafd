"""The vLLM simulator's command line (vllm_sim/cli.py), generated from SimConfig and ServeOptions:
every field is a flag with help, every flag reaches its field, and `--help` names the program it
was started as (`python -m vllm_sim` or `gateway sim`)."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from typing import Annotated, Any

import msgspec
import pytest

from vllm_sim.cli import ServeOptions, add_struct_options, build_parser, config_from_args, serve_options_from_args
from vllm_sim.config import SimConfig

FIELDS = [(SimConfig, f) for f in msgspec.structs.fields(SimConfig)] + [
    (ServeOptions, f) for f in msgspec.structs.fields(ServeOptions)
]
REQUIRED = ["--model", "m", "--port", "0"]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def actions() -> dict[str, argparse.Action]:
    return {a.dest: a for a in build_parser()._actions}


def other_value(f: msgspec.structs.FieldInfo) -> tuple[list[str], Any]:
    """Command-line words setting field ``f`` to a valid value other than its default, and that value."""
    default = None if f.default is msgspec.NODEFAULT else f.default
    if isinstance(default, bool):
        return [flag(f.name)], True
    action = actions()[f.name]
    if action.choices:
        value: Any = next(c for c in action.choices if c != default)
    elif action.type is int:
        value = (default or 0) + 1
    elif action.type is float:
        value = default * 2 if default else 0.5
    else:
        value = f"{f.name}-value"
    return [flag(f.name), str(value)], value


def test_every_field_is_a_flag_with_help() -> None:
    by_dest = actions()
    assert set(by_dest) == {"help"} | {f.name for _, f in FIELDS}
    for action in by_dest.values():
        assert action.help and action.help.strip(), action.dest
    for _, f in FIELDS:
        assert by_dest[f.name].option_strings == [flag(f.name)]
    # the flags the launcher (workers/launcher.py), the benchmarks and the tests pass
    for name in ("model", "host", "port", "max_running", "output_token_ms", "ability", "judge", "log_level"):
        assert flag(name) in by_dest[name].option_strings
    assert by_dest["model"].required and by_dest["port"].required


def test_defaults_are_the_configs() -> None:
    args = build_parser().parse_args(REQUIRED)
    assert config_from_args(args) == SimConfig(model="m")
    assert serve_options_from_args(args) == ServeOptions(port=0)


@pytest.mark.parametrize(("struct", "field"), FIELDS, ids=[f.name for _, f in FIELDS])
def test_each_flag_reaches_its_field(struct: type[msgspec.Struct], field: msgspec.structs.FieldInfo) -> None:
    words, value = other_value(field)
    args = build_parser().parse_args([*REQUIRED, *words])  # the last --model / --port wins
    built = config_from_args(args) if struct is SimConfig else serve_options_from_args(args)
    assert getattr(built, field.name) == value


def test_out_of_range_values_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from vllm_sim.cli import main

    with pytest.raises(SystemExit) as exc:
        main([*REQUIRED, "--error-rate", "2"])
    assert exc.value.code == 2
    assert "error_rate must be within [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args([*REQUIRED, "--max-running", "many"])


def test_a_field_without_a_description_gets_no_flag() -> None:
    class Undocumented(msgspec.Struct, kw_only=True):
        depth: int = 1

    class Untyped(msgspec.Struct, kw_only=True):
        shape: Annotated[list[int], msgspec.Meta(description="no flag can carry a list")] = []

    for struct in (Undocumented, Untyped):
        with pytest.raises(TypeError):
            add_struct_options(argparse.ArgumentParser(), struct)


@pytest.mark.parametrize(
    ("argv", "prog"),
    [
        ([sys.executable, "-m", "vllm_sim", "--help"], "python -m vllm_sim"),
        ([sys.executable, "-m", "gateway.cli", "sim", "--help"], "gateway sim"),
    ],
)
def test_help_names_the_program(argv: list[str], prog: str) -> None:
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert out.startswith(f"usage: {prog} "), out[:80]
    assert "SIMULATOR" in out and "--max-waiting" in out and "__main__" not in out


def test_the_simulator_stands_alone() -> None:
    """vllm_sim imports neither the gateway nor the workers package (it stands in for vLLM)."""
    code = (
        "import sys, vllm_sim, vllm_sim.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'gateway', 'workers'}))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_right_after_the_readiness_line_exits_cleanly(sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm_sim", *REQUIRED, "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and "listening on" in proc.stdout.readline()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=10)
    assert (proc.returncode, err) == (0, "")
