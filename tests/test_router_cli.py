"""`gateway router train|score|evaluate`, run through the real CLI on generated and shipped outcome data."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from router.policy import default_policy_dir

pytestmark = pytest.mark.pure

SHIPPED = default_policy_dir() / "training" / "outcomes.jsonl"
DEMO_HEADS = ("demo-small=Qwen2.5-7B-Instruct|mistralai/Mistral-7B-Instruct-v0.1|cyberagent/calm2-7b-chat|"
              "mistralai/Mixtral-8x7B-Instruct-v0.1,"
              "demo-large=gpt-4o-2024-05-13|gpt-4-1106-preview|tokyotech-llm/Swallow-70b-instruct-hf")
ROUTERS = {"learned", "random", "oracle", "length", "rules", "ridge"}
EASY = ("hello", "weather", "recipe", "garden", "holiday", "music", "friend", "coffee", "story", "movie", "travel",
        "book", "colour", "song")
HARD = ("eigenvalue", "homology", "manifold")
PRICES = """\
currency: EUR
models:
  small:
    - effective_from: 2026-01-01
      per_token: {input_per_million: 0.10, output_per_million: 0.20}
  medium:
    - effective_from: 2026-01-01
      per_token: {input_per_million: 0.50, output_per_million: 1.00}
  large:
    - effective_from: 2026-01-01
      per_token: {input_per_million: 2.00, output_per_million: 4.00}
"""


def planted_rows(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """Prompts where a "hard" word makes `small` fail (0) and `large` succeed (1); elsewhere both succeed."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        hard = rng.random() < 0.15
        words = [rng.choice(EASY) for _ in range(rng.randint(4, 40))]
        if hard:
            words.insert(rng.randrange(len(words)), rng.choice(HARD))
        text = f"request {i}: " + " ".join(words)
        row: dict[str, Any] = {"id": f"planted/{i}", "source": "planted",
                               "outcomes": {"small": 0.0 if hard else 1.0, "medium": 0.5 if hard else 1.0,
                                            "large": 1.0}}
        if i % 10 == 9:
            row["prompt"] = text
        else:
            row["messages"] = [{"role": "user", "content": text}]
        if i % 4 == 0:
            row["max_tokens"] = 200
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["router", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "planted.jsonl", planted_rows(300))


@pytest.fixture(scope="module")
def trained(planted: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("predictor")
    assert main(["router", "train", "--data", str(planted), "--models", "small,medium,large", "--out", str(out),
                 "--holdout", "0.3", "--seed", "0"]) == 0
    return out


def test_train_is_deterministic_and_records_its_provenance(
    planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = []
    for name in ("a", "b"):
        code, out, err = run(capsys, "train", "--data", str(planted), "--models", "small,large=large|medium",
                             "--out", str(tmp_path / name), "--seed", "3", "--holdout", "0.2")
        assert code == 0, err
        outputs.append(out)
    first = (tmp_path / "a" / "predictor.json").read_bytes()
    assert first == (tmp_path / "b" / "predictor.json").read_bytes()
    assert outputs[0] == outputs[1].replace(str(tmp_path / "b"), str(tmp_path / "a"))
    assert "of 300 rows" in outputs[0] and "small" in outputs[0] and "mean score" in outputs[0]
    training = json.loads(first)["training"]
    assert training["data"] == [{"name": "planted.jsonl", "sha256": training["data"][0]["sha256"], "rows": 300}]
    assert (training["seed"], training["holdout"]) == (3, 0.2)
    assert 0 < training["rows"] < 300
    assert training["models"] == {"small": ["small"], "large": ["large", "medium"]}
    assert hashlib.sha256(first).hexdigest() in outputs[0]


def test_score_prints_every_id_with_every_head(
    planted: Path, trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "score", "--predictor", str(trained), "--data", str(planted))
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["id"] for line in lines] == [f"planted/{i}" for i in range(300)]
    for line in lines:
        assert set(line["scores"]) == {"small", "medium", "large"}
        assert all(0.0 <= v <= 1.0 and round(v, 6) == v for v in line["scores"].values())
    assert "request" not in out  # ids and scores only, no prompt text


def test_evaluate_finds_the_planted_rule(
    planted: Path, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plot = tmp_path / "eval.svg"
    code, out, err = run(capsys, "evaluate", "--predictor", str(trained), "--data", str(planted),
                         "--models", "small,large", "--holdout", "0.3", "--seed", "0", "--json", "--plot", str(plot))
    assert code == 0, err
    report = json.loads(out)
    assert set(report["routers"]) == ROUTERS
    apgr = {name: r["apgr"] for name, r in report["routers"].items()}
    assert apgr["learned"] > 0.8
    assert apgr["random"] == pytest.approx(0.5, abs=1e-9)
    assert apgr["oracle"] >= apgr["learned"]
    assert report["warnings"] == [] and "WARNING" not in err
    rows = report["rows"]
    assert rows["data"] == 300 and 0 < rows["scored"] == rows["evaluated"] < 300
    assert rows["ridge_training"] == 300 - rows["evaluated"]
    assert report["currency"] is None and report["unpriced"] == ["small", "large"]
    for r in report["routers"].values():
        assert [p["share"] for p in r["points"]] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
        assert all(p["cost_per_1k"] is None for p in r["points"])
    svg = ET.parse(plot).getroot()
    assert svg.tag.endswith("svg")
    assert "share of calls to large" in plot.read_text()


def test_evaluate_text_output_and_default_plot(
    planted: Path, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "evaluate", "--predictor", str(trained / "predictor.json"), "--data", str(planted),
                         "--models", "small,large")
    assert code == 0, err
    assert (tmp_path / "router-evaluation.svg").exists()
    table = out.split("\n\n")[1].splitlines()
    assert {line.split()[0] for line in table[2:]} == ROUTERS
    # holdout 0 on the data it was trained on: in-sample, and the ridge baseline too
    assert "WARNING: the predictor was trained on these data" in out
    assert "optimistic" in out
    assert "request" not in out


def test_evaluate_warns_when_the_split_differs(
    planted: Path, trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "evaluate", "--predictor", str(trained), "--data", str(planted),
                         "--models", "small,large", "--holdout", "0.3", "--seed", "1", "--json", "--plot", "none")
    assert code == 0
    warnings = json.loads(out)["warnings"]
    assert len(warnings) == 1 and "--holdout 0.3 --seed 0" in warnings[0] and "may have seen" in warnings[0]
    assert err.startswith("WARNING: ")


def test_evaluate_three_models_along_cost(
    planted: Path, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text(PRICES)
    plot = tmp_path / "eval.png"
    code, out, err = run(capsys, "evaluate", "--predictor", str(trained), "--data", str(planted), "--models",
                         "small,medium,large", "--holdout", "0.3", "--prices", str(prices), "--json",
                         "--plot", str(plot))
    assert code == 0, err
    report = json.loads(out)
    assert report["currency"] == "EUR" and report["unpriced"] == []
    along = report["along_cost"]
    assert (along["cheapest"], along["dearest"]) == ("small", "large")
    assert along["apgr"]["random"] == pytest.approx(0.5, abs=1e-9)
    assert along["apgr"]["oracle"] >= along["apgr"]["learned"] > 0.6
    points = report["routers"]["learned"]["points"]
    assert 0 < points[0]["cost_per_1k"] < points[-1]["cost_per_1k"]
    assert plot.read_bytes().startswith(b"\x89PNG")

    prices.write_text(PRICES.split("  large:")[0])
    code, _, err = run(capsys, "evaluate", "--predictor", str(trained), "--data", str(planted), "--models",
                       "small,medium,large", "--holdout", "0.3", "--prices", str(prices), "--plot", "none")
    assert code == 1
    assert "needs a price for each; none for large" in err


def test_bad_data_exits_1_with_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [json.dumps(r) for r in planted_rows(5)]
    rows[2] = "{not json"
    rows[3] = json.dumps({"id": "x", "messages": [{"role": "user", "content": "hi"}], "outcomes": {"small": 2}})
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(rows) + "\n")
    code, out, err = run(capsys, "train", "--data", str(data), "--models", "small", "--out", str(tmp_path / "p"))
    assert code == 1
    assert f"{data}:3: not JSON" in err and f"{data}:4:" in err
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "p").exists()

    code, _, err = run(capsys, "train", "--data", str(tmp_path / "missing.jsonl"), "--models", "small",
                       "--out", str(tmp_path / "p"))
    assert code == 1 and "missing.jsonl:1: cannot read the file" in err


def test_unknown_models_exit_1_with_names(
    planted: Path, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "train", "--data", str(planted), "--models", "small,big=larg|large",
                       "--out", str(tmp_path / "p"))
    assert code == 1
    assert "unknown model `larg` (in `big`): no row scores it; closest: large" in err
    assert "Traceback" not in err

    code, _, err = run(capsys, "evaluate", "--predictor", str(trained), "--data", str(planted),
                       "--models", "small,huge", "--plot", "none")
    assert code == 1
    assert "`huge` not a head" in err and "its heads: large, medium, small" in err

    code, _, err = run(capsys, "evaluate", "--predictor", str(trained), "--data", str(planted),
                       "--models", "large,small", "--plot", "none")
    assert code == 1 and "list the weaker model first" in err

    code, _, err = run(capsys, "score", "--predictor", str(tmp_path / "nowhere"), "--data", str(planted))
    assert code == 1 and "cannot read the predictor" in err


def test_the_router_command_loads_no_training_library() -> None:
    code = ("import sys; from gateway.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('sklearn', 'scipy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_shipped_data_with_a_holdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a", "b"):
        code, out, err = run(capsys, "train", "--data", str(SHIPPED), "--models", DEMO_HEADS,
                             "--out", str(tmp_path / name), "--holdout", "0.3", "--seed", "0")
        assert code == 0, err
    artefact = (tmp_path / "a" / "predictor.json").read_bytes()
    assert artefact == (tmp_path / "b" / "predictor.json").read_bytes()
    plot = tmp_path / "shipped.svg"
    code, out, err = run(capsys, "evaluate", "--predictor", str(tmp_path / "a"), "--data", str(SHIPPED),
                         "--models", "demo-small,demo-large", "--holdout", "0.3", "--seed", "0", "--json",
                         "--plot", str(plot))
    assert code == 0, err
    report = json.loads(out)
    assert set(report["routers"]) == ROUTERS
    assert report["warnings"] == []
    assert report["currency"] == "USD"
    assert 0 < report["rows"]["scored"] <= report["rows"]["evaluated"] < report["rows"]["data"]
    routers = report["routers"]
    assert routers["learned"]["apgr"] > routers["random"]["apgr"] == pytest.approx(0.5, abs=1e-9)
    for r in routers.values():
        costs = [p["cost_per_1k"] for p in r["points"]]
        assert costs[0] < costs[-1]
    ET.parse(plot)
