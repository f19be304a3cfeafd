"""`gateway policies check|test` and `gateway route explain`, as an operator runs them."""

from __future__ import annotations

import io
import json
import re
import shutil
import textwrap
from pathlib import Path

import pytest

from gateway.cli import main
from router.policy import default_policy_dir, load_policy_set

pytestmark = pytest.mark.pure


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def policy_copy(tmp_path: Path) -> Path:
    """A copy of the shipped policy directory that a test may break."""
    return Path(shutil.copytree(default_policy_dir(), tmp_path / "policies"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# ------------------------------------------------------------------------------------------- check


def test_check_passes_on_the_shipped_policies(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["policies", "check"], capsys)
    assert code == 0
    assert out.startswith("policies OK: 2 models, 2 aliases, 5 rules, ")
    assert f"tests in {default_policy_dir()} (sha256 " in out


def test_check_reports_file_line_errors(policy_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    routing = policy_copy / "routing.yaml"
    text = routing.read_text()
    text = text.replace("route: requested", "route: requested\n    colour: blue", 1)
    text = text.replace("  - name: long-context", "  - name: short-chat", 1)
    routing.write_text(text)
    models = policy_copy / "models.yaml"
    models.write_text(models.read_text().replace("  smart: demo-large", "  smart: demo-huge"))
    write(policy_copy / "tests" / "extra.yaml", """\
        cases:
          - name: wrong model name
            request: {messages: [{role: user, content: hi}]}
            expect: {model: demo-medium}
        """)
    code, out, err = run(["policies", "check", "--policies", str(policy_copy)], capsys)
    assert code == 1
    lines = out.splitlines()
    r, m, t = policy_copy / "routing.yaml", policy_copy / "models.yaml", policy_copy / "tests" / "extra.yaml"
    line_colour = text.splitlines().index("    colour: blue") + 1
    line_dup = text.splitlines().index("  - name: short-chat", text.splitlines().index("  - name: short-chat") + 1) + 1
    line_smart = models.read_text().splitlines().index("  smart: demo-huge") + 1
    assert lines[0].startswith(f"{m}:{line_smart}: alias `smart` points to `demo-huge`, which is not a model")
    assert lines[1].startswith(f"{r}:{line_colour}: unknown field `colour`")
    assert lines[2].startswith(f"{r}:{line_dup}: duplicate rule name `short-chat` (first at line ")
    assert len(lines) == 3  # with the catalogue broken, the test files are only checked for their own shape
    assert err.strip() == "3 errors"
    # with a valid policy, the expectations of the test files are checked against it too
    shutil.copy(default_policy_dir() / "routing.yaml", r)
    shutil.copy(default_policy_dir() / "models.yaml", m)
    code, out, err = run(["policies", "check", "--policies", str(policy_copy)], capsys)
    assert code == 1
    assert out.splitlines() == [f"{t}:4: unknown model `demo-medium` (models: demo-small, demo-large)"]


@pytest.mark.parametrize(
    ("file", "text", "expected"),
    [
        ("routing.yaml", "rules:\n  - name: all\n  - name: never\n    match: {tenant: x}\n",
         "routing.yaml:3: rule `never` can never match: rule `all`"),
        ("models.yaml", "models:\n  - {name: a, pool: p, context_window: 9, tier: 1, fallbacks: [b]}\n"
                        "  - {name: b, pool: p, context_window: 9, tier: 1, fallbacks: [a]}\n",
         "models.yaml:2: fallback cycle: a -> b -> a"),
        ("models.yaml", "models:\n  - {name: a, pool: p, context_window: 9, tier: 1}\naliases: {a: a}\n",
         "models.yaml:3: alias `a` clashes with the model of the same name (line 2)"),
        ("models.yaml", "models:\n  - {name: a, pool: p, context_window: nine, tier: 1}\n",
         "models.yaml:2: `context_window`: expected integer, got string 'nine'"),
    ],
)
def test_check_each_kind_of_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], file: str, text: str,
                                  expected: str) -> None:
    root = tmp_path / "p"
    write(root / "models.yaml", "models:\n  - {name: a, pool: p, context_window: 9, tier: 1}\n")
    write(root / "routing.yaml", "rules: []\n")
    write(root / file, text)
    code, out, _ = run(["policies", "check", "--policies", str(root)], capsys)
    assert code == 1
    assert out.splitlines()[0] == f"{root}/{expected}" or out.splitlines()[0].startswith(f"{root}/{expected}")


# -------------------------------------------------------------------------------------------- test


def test_policy_tests_pass_on_the_shipped_files(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["policies", "test"], capsys)
    assert code == 0
    assert "PASS a short question goes to the small model  ->  demo-small by `learned`" in out
    assert "PASS a greeting goes to the small model  ->  demo-small by `short-chat`" in out
    assert "PASS tool calls go to the large model (a hard constraint, whatever the prediction)  ->  demo-large " \
           "by `learned`" in out
    assert "PASS a suspended tenant is denied  ->  error 403" in out
    assert out.rstrip().endswith(" passed, 0 failed")


def test_policy_tests_fail_with_a_readable_diff(policy_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(policy_copy / "tests" / "wrong.yaml", """\
        cases:
          - name: a code question expected on the small model
            request:
              messages:
                - {role: user, content: "Why does this fail?\\n```python\\ndef add(a, b):\\n    return a +\\n```"}
            expect: {model: demo-small, rule: short-chat, category: code}
          - name: a denial that does not happen
            request: {messages: [{role: user, content: hi}]}
            expect: {error: {status: 403}}
          - name: a prediction out of its bounds
            request: {messages: [{role: user, content: "Show that the square root of 2 is irrational."}]}
            expect: {quality: {demo-small: {min: 0.9}, demo-large: {max: 1}}}
        """)
    code, out, _ = run(["policies", "test", "--policies", str(policy_copy)], capsys)
    assert code == 1
    wrong = policy_copy / "tests" / "wrong.yaml"
    assert f"FAIL a code question expected on the small model  ({wrong}:2)" in out
    block = out.split(f"FAIL a code question expected on the small model  ({wrong}:2)")[1].split("\nFAIL ")[0]
    assert block.splitlines()[1:5] == [
        "    - model: demo-small",
        "    + model: demo-large",
        "    - rule: short-chat",
        "    + rule: learned",
    ]
    assert "    trace:" in block
    assert [line.split()[:3] for line in block.splitlines() if line.startswith("      rule ")] == [
        ["rule", "suspended-tenants", "no"], ["rule", "honour-requested", "no"], ["rule", "long-context", "no"],
        ["rule", "short-chat", "no"], ["rule", "learned", "yes"]]
    assert "candidate  demo-small         yes  fits; predicted quality 0." in block
    assert "choice     demo-large         yes  the cheapest predicted to reach 0." in block
    assert "(0.55 x the best 0." in block and "demo-small predicted below" in block
    assert f"FAIL a denial that does not happen  ({wrong}:7)" in out
    assert "    - error: 403 null\n    + decision: demo-small by rule `short-chat`" in out
    block = out.split(f"FAIL a prediction out of its bounds  ({wrong}:10)")[1]
    small = [line for line in block.splitlines() if "quality of" in line]
    assert small[0] == "    - quality of demo-small: 0.9..1"
    assert re.fullmatch(r"    \+ quality of demo-small: 0\.\d{3}", small[1]) and float(small[1].split()[-1]) < 0.9
    assert len(small) == 2  # demo-large is within its bounds
    assert out.rstrip().endswith(" passed, 3 failed")


def test_policy_test_on_a_broken_policy_reports_the_errors(policy_copy: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    (policy_copy / "routing.yaml").write_text("rules:\n  - name: x\n    match: {tier: high}\n")
    code, out, err = run(["policies", "test", "--policies", str(policy_copy)], capsys)
    assert code == 1
    assert out.startswith(f"{policy_copy / 'routing.yaml'}:3: `tier`: expected mapping | null, got string 'high'")
    assert "gateway policies check" in err


# ------------------------------------------------------------------------------------------ explain


def test_route_explain_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = write(tmp_path / "req.json", '{"model": "auto", "messages": [{"role": "user", "content": "Hello there!"}],'
                                        ' "max_tokens": 32, "temperature": 0}')
    code, out, _ = run(["route", "explain", "--no-prices", str(body)], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("request    chat, ")
    assert lines[0].endswith("prompt tokens (exact), max_tokens 32, 1 message, 1 turn")
    assert "decision   demo-small (pool small) by rule `short-chat` (" in out
    assert "           fallbacks: demo-large (pool large)" in out
    assert "           cache: store, ttl 600s, tenant-scoped (deterministic request)" in out
    assert "           expected cost: unknown (no rates); reference model demo-large" in out
    # the predictions are shown even when the rule does not route on them
    quality = next(line for line in lines if line.startswith("quality    "))
    shown = re.fullmatch(r"quality    predicted: (\S+) [01]\.\d\d, (\S+) [01]\.\d\d \(the rule does not route on it\)",
                         quality)
    assert shown and {shown[1], shown[2]} == {"demo-small", "demo-large"}, quality
    predictor = load_policy_set().predictor
    assert predictor is not None and lines[lines.index(quality) + 1] == f"           predictor {predictor.name}"
    trace = lines[lines.index("trace") + 1:]
    assert trace[0].split() == ["rule", "suspended-tenants", "no", "tenant", "`default`", "is", "not", "one", "of",
                                "suspended"]
    assert trace[1].split()[:3] == ["rule", "honour-requested", "no"]
    assert trace[2].split()[:3] == ["rule", "long-context", "no"]
    assert trace[3].split() == ["rule", "short-chat", "yes", "kind", "in", "[chat],", "prompt_tokens", "<=", "10"]
    assert [t.split()[:3] for t in trace if t.startswith("  candidate")] == [
        ["candidate", "demo-small", "yes"], ["candidate", "demo-large", "yes"]]
    assert "predicted quality" not in out.split("trace")[1]  # smallest_capable never asked the predictor
    assert trace[-1].startswith("policy     ")


def explained_scores(line: str) -> dict[str, float]:
    """`quality    predicted: a 0.12, b 0.34; accepted from 0.10` -> {a: 0.12, b: 0.34, min: 0.10}."""
    m = re.fullmatch(r"quality    predicted: (.+); accepted from (0\.\d\d|1\.00)", line)
    assert m, line
    scores = {name: float(v) for name, v in (pair.split() for pair in m.group(1).split(", "))}
    return {**scores, "min": float(m.group(2))}


def test_route_explain_shows_the_predicted_quality_the_rule_routed_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # "What is 2+2?" goes to demo-small by `learned` (pinned by policies/tests/demo.yaml)
    body = write(tmp_path / "req.json", '{"messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 32}')
    code, out, _ = run(["route", "explain", "--no-prices", str(body)], capsys)
    assert code == 0
    lines = out.splitlines()
    scores = explained_scores(next(line for line in lines if line.startswith("quality    ")))
    assert set(scores) == {"demo-small", "demo-large", "min"} and all(0 <= v <= 1 for v in scores.values())
    assert abs(scores["min"] - 0.55 * max(scores["demo-small"], scores["demo-large"])) <= 0.01
    assert scores["demo-small"] >= scores["min"]
    assert "decision   demo-small (pool small) by rule `learned` (" in out
    trace = lines[lines.index("trace") + 1:]
    candidates = [t for t in trace if t.startswith("  candidate")]
    assert [t.split()[:3] for t in candidates] == [["candidate", "demo-small", "yes"],
                                                   ["candidate", "demo-large", "yes"]]
    assert f"fits; predicted quality {scores['demo-small']:.2f}, tier 1, no price" in candidates[0]
    (choice,) = [t for t in trace if t.startswith("  choice")]
    assert choice.split()[:3] == ["choice", "demo-small", "yes"]
    assert choice.endswith(f"the cheapest that fits, predicted {scores['demo-small']:.2f} >= {scores['min']:.2f} "
                           f"(0.55 x the best {scores['demo-large']:.2f})")

    code, out, _ = run(["route", "explain", "--no-prices", "--json", str(body)], capsys)
    assert code == 0
    data = json.loads(out)
    quality = data["quality"]
    assert set(quality) == {"predicted", "min", "target", "predictor"}
    assert quality["target"] == 0.55 and quality["predictor"] == load_policy_set().predictor.name  # type: ignore[union-attr]
    assert quality["predicted"] == data["decision"]["quality"]
    assert {m: round(v, 2) for m, v in quality["predicted"].items()} == \
        {m: scores[m] for m in ("demo-small", "demo-large")}
    assert quality["min"] == data["decision"]["quality_min"] == pytest.approx(0.55 * quality["predicted"]["demo-large"],
                                                                               abs=1e-3)
    # a rule that does not route on quality: the predictions, but no threshold
    code, out, _ = run(["route", "explain", "--no-prices", "--json", "--model", "fast", str(body)], capsys)
    data = json.loads(out)
    assert data["decision"]["rule"] == "honour-requested" and data["decision"]["quality"] is None
    assert data["quality"]["min"] is None and set(data["quality"]["predicted"]) == {"demo-small", "demo-large"}


def test_route_explain_json_from_stdin_with_options(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    body = {"model": "fast", "messages": [{"role": "user", "content": "Hi"}]}
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(json.dumps(body).encode())))
    code, out, _ = run(["route", "explain", "--json", "--no-prices", "--unhealthy", "small", "--header", "X-Team=blue",
                        "-"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["requested_model"] == "fast"
    assert data["decision"]["model"] == "demo-large"  # fast = demo-small, whose pool is down: its fallback
    assert data["decision"]["rule"] == "honour-requested"
    assert data["features"]["category"] == "chat" and data["features"]["capabilities"] == []
    assert data["error"] is None
    assert {"step": "candidate", "subject": "demo-small", "ok": False, "detail": "pool `small` is unhealthy"} \
        in data["trace"]


def test_route_explain_of_a_denied_or_impossible_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = write(tmp_path / "req.json", '{"messages": [{"role": "user", "content": "Hello"}]}')
    code, out, _ = run(["route", "explain", "--no-prices", "--tenant", "suspended", str(body)], capsys)
    assert code == 1
    assert ("decision   ERROR 403 policy_denied by rule `suspended-tenants`: This tenant is suspended; "
            "contact the platform team.") in out
    code, out, _ = run(["route", "explain", "--no-prices", "--json", "--model", "demo-small", str(write(
        tmp_path / "tools.json", '{"messages": [{"role": "user", "content": "Weather?"}], "tools": '
        '[{"type": "function", "function": {"name": "w", "parameters": {}}}]}'))], capsys)
    assert code == 1
    data = json.loads(out)
    assert data["decision"] is None
    assert data["error"]["status"] == 400 and data["error"]["code"] == "no_capable_model"
    assert "`demo-small` does not support tool calls" in data["error"]["message"]


def test_route_explain_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["route", "explain", str(write(tmp_path / "bad.json", "{not json"))], capsys)
    assert code == 2 and "cannot read a JSON body" in err
    code, _, err = run(["route", "explain", "--header", "novalue", str(write(tmp_path / "ok.json", "{}"))], capsys)
    assert code == 2 and "--header wants K=V" in err


def test_route_explain_uses_the_price_file_when_there_is_one(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gateway.accounting.prices")
    prices = default_policy_dir() / "prices.yaml"
    if not prices.exists():
        pytest.skip("no shipped price file")
    body = write(tmp_path / "req.json", '{"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 10}')
    code, out, _ = run(["route", "explain", "--prices", str(prices), str(body)], capsys)
    assert code == 0
    assert "expected cost <= " in out and "on the reference model demo-large: " in out


def test_check_warns_about_pools_the_gateway_does_not_have(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path / "gw.yaml", "pools:\n  - {name: gpu, model: llama, replicas: ['http://gpu:8000']}\n")
    code, out, err = run(["policies", "check", "--config", str(config)], capsys)
    assert code == 0 and out.startswith("policies OK")
    assert f"warning: {default_policy_dir() / 'models.yaml'}:14: model `demo-small` is served by pool `small`, " \
           "which is not configured" in err
    assert f"warning: pool `gpu` serves `llama`, which {default_policy_dir() / 'models.yaml'} does not list: " \
           "`gateway serve` derives its entry from the workers' /v1/models" in err
    code, _, err = run(["policies", "check"], capsys)  # the embedded defaults have pools small and large
    assert code == 0 and "warning" not in err
