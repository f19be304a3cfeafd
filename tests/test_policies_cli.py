"""`gateway policies check|test` and `gateway route explain`, as an operator runs them."""

from __future__ import annotations

import io
import json
import shutil
import textwrap
from pathlib import Path

import pytest

from gateway.cli import main
from router.policy import default_policy_dir


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
    assert out.startswith("policies OK: 2 models, 2 aliases, 6 rules, ")
    assert f"tests in {default_policy_dir()} (sha256 " in out


def test_check_reports_file_line_errors(policy_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    routing = policy_copy / "routing.yaml"
    text = routing.read_text()
    text = text.replace("route: requested", "route: requested\n    colour: blue", 1)
    text = text.replace("  - name: long-context", "  - name: hard-tasks", 1)
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
    line_dup = text.splitlines().index("  - name: hard-tasks", text.splitlines().index("  - name: hard-tasks") + 1) + 1
    line_smart = models.read_text().splitlines().index("  smart: demo-huge") + 1
    assert lines[0].startswith(f"{m}:{line_smart}: alias `smart` points to `demo-huge`, which is not a model")
    assert lines[1].startswith(f"{r}:{line_colour}: unknown field `colour`")
    assert lines[2].startswith(f"{r}:{line_dup}: duplicate rule name `hard-tasks` (first at line ")
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
    assert "PASS short simple chat goes to the small model  ->  demo-small by `default`" in out
    assert "PASS a suspended tenant is denied  ->  error 403" in out
    assert out.rstrip().endswith(" passed, 0 failed")


def test_policy_tests_fail_with_a_readable_diff(policy_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(policy_copy / "tests" / "wrong.yaml", """\
        cases:
          - name: a code question expected on the small model
            request:
              messages: [{role: user, content: "Fix my python function please"}]
            expect: {model: demo-small, rule: default, category: code}
          - name: a denial that does not happen
            request: {messages: [{role: user, content: hi}]}
            expect: {error: {status: 403}}
        """)
    code, out, _ = run(["policies", "test", "--policies", str(policy_copy)], capsys)
    assert code == 1
    wrong = policy_copy / "tests" / "wrong.yaml"
    assert f"FAIL a code question expected on the small model  ({wrong}:2)" in out
    block = out.split(f"FAIL a code question expected on the small model  ({wrong}:2)")[1]
    assert block.splitlines()[1:5] == [
        "    - model: demo-small",
        "    + model: demo-large",
        "    - rule: default",
        "    + rule: hard-tasks",
    ]
    assert "    trace:" in block
    assert "rule       hard-tasks" in block and "yes  category in [code, math, reasoning]" in block
    assert f"FAIL a denial that does not happen  ({wrong}:6)" in out
    assert "    - error: 403 null\n    + decision: demo-small by rule `default`" in out
    assert out.rstrip().endswith(" passed, 2 failed")


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
    assert "decision   demo-small (pool small) by rule `default` (" in out
    assert "           fallbacks: demo-large (pool large)" in out
    assert "           cache: store, ttl 600s, tenant-scoped (deterministic request)" in out
    assert "           expected cost: unknown (no rates); reference model demo-large" in out
    trace = lines[lines.index("trace") + 1:]
    assert trace[0].split() == ["rule", "suspended-tenants", "no", "tenant", "`default`", "is", "not", "one", "of",
                                "suspended"]
    assert trace[1].split()[:3] == ["rule", "honour-requested", "no"]
    assert [t.split()[:3] for t in trace if t.startswith("  candidate")] == [
        ["candidate", "demo-small", "yes"], ["candidate", "demo-large", "yes"]]
    assert trace[-1].startswith("policy     ")


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
    code, _, err = run(["policies", "check"], capsys)  # the embedded defaults have pools small and large
    assert code == 0 and "warning" not in err


def test_the_example_policy_in_the_readme_is_valid(policy_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = (default_policy_dir() / "README.md").read_text()
    section = readme.split("### An example policy", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    (policy_copy / "routing.yaml").write_text(example)
    for test_file in (policy_copy / "tests").glob("*.yaml"):
        test_file.unlink()  # the shipped tests expect the shipped rules
    code, out, _ = run(["policies", "check", "--policies", str(policy_copy)], capsys)
    assert code == 0, out
    body = write(policy_copy.parent / "req.json",
                 '{"messages": [{"role": "user", "content": "Summarize our refund policy."}], "temperature": 0.7}')
    code, out, _ = run(["route", "explain", "--no-prices", "--policies", str(policy_copy), "--tenant", "acme",
                        str(body)], capsys)
    assert code == 0
    assert "decision   demo-small (pool small) by rule `acme-support`" in out
    assert "cache: store, ttl 3600s, shared namespace `acme-support`" in out
    assert "max_tokens: set to 512 (the rule's cap)" in out
