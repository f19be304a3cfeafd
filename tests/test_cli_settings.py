"""Every command that reads routing policies or prices takes them from `--config`, as `gateway serve` does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gateway.cli import main
from router.policy import default_policy_dir

pytestmark = pytest.mark.pure

RULE = "configured-short-chat"  # the configured policy's name for the shipped `short-chat`
HELLO = '{"messages": [{"role": "user", "content": "Hello there!"}], "max_tokens": 8, "temperature": 0}'
ROWS = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"question {i}: what is {i} + {i}?"}],
         "outcomes": {"small": float(i % 2), "large": 1.0}} for i in range(40)]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def config_for(tmp_path: Path, name: str, **settings: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text("".join(f"{key}: {value}\n" for key, value in settings.items()))
    return str(path)


@pytest.fixture
def good(tmp_path: Path) -> str:
    """A config whose policies_dir is the shipped policy with `short-chat` renamed."""
    policies = Path(shutil.copytree(default_policy_dir(), tmp_path / "good"))
    for file in (policies / "routing.yaml", *(policies / "tests").glob("*.yaml")):
        file.write_text(file.read_text().replace("short-chat", RULE))
    return config_for(tmp_path, "good", policies_dir=str(policies), state_dir=str(tmp_path / "state"))


@pytest.fixture
def broken(tmp_path: Path) -> tuple[str, Path]:
    """A config whose policies_dir has a bad routing.yaml and a bad classify.yaml; the classify.yaml line."""
    policies = Path(shutil.copytree(default_policy_dir(), tmp_path / "broken"))
    (policies / "routing.yaml").write_text("rules:\n  - name: x\n    match: {tier: high}\n")
    (policies / "classify.yaml").write_text("long_context_tokens: many\n")
    return config_for(tmp_path, "broken", policies_dir=str(policies), state_dir=str(tmp_path / "state")), policies


@pytest.fixture
def data(tmp_path: Path) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return str(path)


@pytest.fixture
def predictor(tmp_path: Path, data: str) -> str:
    out = tmp_path / "predictor"
    assert main(["router", "train", "--data", data, "--models", "small,large", "--out", str(out)]) == 0
    return str(out)


def test_policies_check_and_test_read_the_configured_policy(
        good: str, broken: tuple[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    config, policies = broken
    routing_error = f"{policies / 'routing.yaml'}:3: `tier`: expected mapping | null, got string 'high'"
    code, out, err = run(capsys, "policies", "check", "--config", config)
    assert code == 1 and routing_error in out.splitlines() and "error" in err
    code, out, _ = run(capsys, "policies", "test", "--config", config)
    assert code == 1 and routing_error in out.splitlines()

    code, out, _ = run(capsys, "policies", "check", "--config", good)
    assert code == 0 and out.startswith("policies OK") and f"tests in {Path(good).parent / 'good'} " in out
    assert out.splitlines()[1] == (f"rules, in order: suspended-tenants, honour-requested, long-context, {RULE}, "
                                   "learned")
    code, out, _ = run(capsys, "policies", "test", "--config", good)
    assert code == 0 and f"PASS a greeting goes to the small model  ->  demo-small by `{RULE}`" in out


def test_route_explain_reads_the_configured_policy(
        good: str, broken: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = tmp_path / "req.json"
    body.write_text(HELLO)
    config, policies = broken
    code, _, err = run(capsys, "route", "explain", "--no-prices", "--config", config, str(body))
    assert code == 2 and f"{policies / 'routing.yaml'}:3: `tier`" in err
    code, out, _ = run(capsys, "route", "explain", "--no-prices", "--config", good, str(body))
    assert code == 0 and f"decision   demo-small (pool small) by rule `{RULE}`" in out
    # --policies still wins over the settings
    code, out, _ = run(capsys, "route", "explain", "--no-prices", "--config", good, "--policies",
                       str(default_policy_dir()), str(body))
    assert code == 0 and "by rule `short-chat`" in out


def test_route_explain_prices_from_the_configured_price_file(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text((default_policy_dir() / "prices.yaml").read_text().replace("currency: USD", "currency: CHF"))
    body = tmp_path / "req.json"
    body.write_text(HELLO)
    code, out, _ = run(capsys, "route", "explain", "--config", config_for(tmp_path, "p", prices_file=str(prices)),
                       str(body))
    assert code == 0
    (line,) = [line for line in out.splitlines() if "expected cost <= " in line]
    amount = line.split("expected cost <= ")[1].split()[0]
    assert line.split("expected cost <= ")[1].split()[1].rstrip(";") == "CHF"
    assert len(amount.split(".")[1]) == 6  # the CLI's one money precision


def test_router_commands_read_the_configured_classifier(
        broken: tuple[str, Path], data: str, predictor: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    config, policies = broken
    error = f"{policies / 'classify.yaml'}:1: `long_context_tokens`: expected integer"
    for command, argv in (
            ("train", ["--data", data, "--models", "small,large", "--out", str(tmp_path / "p")]),
            ("score", ["--predictor", predictor, "--data", data]),
            ("evaluate", ["--predictor", predictor, "--data", data, "--models", "small,large", "--plot", "none"])):
        code, out, err = run(capsys, "router", command, "--config", config, *argv)
        assert code == 1 and out == "", (command, err)
        assert err.startswith(f"gateway router {command}: {error}"), (command, err)


def test_a_bad_config_is_one_line_naming_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "missing.yaml")
    for argv in (["policies", "check"], ["policies", "test"], ["route", "explain", "-"]):
        code, out, err = run(capsys, *argv, "--config", missing)
        assert code == 2 and out == ""
        assert err.splitlines() == [f"gateway {' '.join(argv[:2])}: cannot read config file {missing}: "
                                    "No such file or directory"]
