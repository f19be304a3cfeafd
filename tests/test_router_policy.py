"""Loading and validating routing policies: the strict two-phase load and every `policies check` error."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from router.errors import GatewayError, PolicyError
from router.policy import PolicySet, default_policy_dir, load_policy_set, read_policy_set

pytestmark = pytest.mark.pure

MODELS = """\
models:
  - name: tiny
    pool: p-tiny
    context_window: 2048
    tier: 1
    capabilities: [json_object]
    scores: {chat: 0.6}
    fallbacks: [mid]
  - name: mid
    pool: p-mid
    context_window: 8192
    tier: 2
    capabilities: [tools, json_object]
    scores: {chat: 0.8, code: 0.7}
  - name: mid2
    pool: p-mid2
    context_window: 8192
    tier: 2
    capabilities: [tools, json_object]
    scores: {chat: 0.8, code: 0.9}
  - name: big
    pool: p-big
    context_window: 32768
    tier: 3
    capabilities: [tools, json_schema, json_object, logprobs, n, vision, long_context]
    scores: {chat: 0.9, code: 0.9}
aliases:
  quick: tiny
  best: big
"""

CLASSIFY = """\
tokens: {exact_chars: 4096, sample_chars: 768, default_output_tokens: 100}
long_context_tokens: 16000
categories:
  code:
    signals:
      - {structure: code_fence, weight: 2}
      - {keywords: [python, stack trace], weight: 2}
  math:
    signals:
      - {regex: '\\d+ *[-+*/] *\\d+', weight: 2}
complexity:
  signals:
    - {category: [code, math], weight: 2}
    - {prompt_tokens: {min: 1000}, weight: 1}
  tiers:
    - {tier: 1, min_score: 0}
    - {tier: 2, min_score: 2}
    - {tier: 3, min_score: 3}
"""

ROUTING = """\
defaults:
  reference_model: big
  cache: {ttl_s: 60}
rules:
  - name: default
    route: smallest_capable
"""


def write_policy(
    root: Path, routing: str = ROUTING, models: str = MODELS, classify: str | None = CLASSIFY,
    tests: dict[str, str] | None = None,
) -> Path:
    """A policy directory with the given files (dedented); returns it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "models.yaml").write_text(textwrap.dedent(models))
    (root / "routing.yaml").write_text(textwrap.dedent(routing))
    if classify is not None:
        (root / "classify.yaml").write_text(textwrap.dedent(classify))
    for name, text in (tests or {}).items():
        (root / "tests").mkdir(exist_ok=True)
        (root / "tests" / name).write_text(textwrap.dedent(text))
    return root


def errors_of(root: Path) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policy_set(root)
    return list(info.value.errors)


def only_error(root: Path) -> str:
    errors = errors_of(root)
    assert len(errors) == 1, errors
    return errors[0]


# ---------------------------------------------------------------------------------------------- loading


def test_shipped_policy_loads_from_any_cwd(tmp_path: Path) -> None:
    policy = load_policy_set()
    assert policy.directory == default_policy_dir()
    assert default_policy_dir() == Path(__file__).resolve().parent.parent / "policies"
    assert policy.routable_names() == ("auto", "demo-small", "demo-large", "fast", "smart")
    assert policy.resolve("fast") == "demo-small" and policy.resolve("smart") == "demo-large"
    assert policy.resolve("auto") is None and policy.resolve("nope") is None
    assert {m.name: (m.pool, m.context_window, m.tier) for m in policy.models.values()} == {
        "demo-small": ("small", 1024, 1), "demo-large": ("large", 8192, 3)}
    assert "tools" not in policy.models["demo-small"].capabilities
    assert {"tools", "json_schema", "logprobs"} <= policy.models["demo-large"].capabilities
    # from another working directory, through the CLI, as an operator would run it
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "policies", "check"], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(default_policy_dir().parent)}, check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "policies OK: 2 models, 2 aliases" in out.stdout


def test_policy_set_is_immutable_and_hashed(tmp_path: Path) -> None:
    root = write_policy(tmp_path / "p")
    policy = load_policy_set(root)
    assert isinstance(policy, PolicySet)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.rules = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        policy.models["x"] = policy.models["tiny"]  # type: ignore[index]
    with pytest.raises(TypeError):
        policy.aliases["x"] = "tiny"  # type: ignore[index]
    assert [Path(f).name for f in policy.files] == ["models.yaml", "classify.yaml", "routing.yaml"]
    assert len(policy.hash) == 64
    assert load_policy_set(root).hash == policy.hash  # same content, same hash
    (root / "routing.yaml").write_text(ROUTING + "\n# a comment changes the content\n")
    assert load_policy_set(root).hash != policy.hash
    assert policy.models["tiny"].fallbacks == ("mid",)
    assert policy.models["tiny"].aliases == ("quick",)
    assert policy.check_pools(["p-tiny", "p-mid", "p-mid2"]) == [
        f"{root / 'models.yaml'}:21: model `big` is served by pool `p-big`, which is not configured"]
    assert policy.check_pools(policy.pools()) == []


def test_policy_error_is_a_gateway_error_with_file_line_messages(tmp_path: Path) -> None:
    root = write_policy(tmp_path / "p", routing="rules:\n  - name: a\n    colour: red\n")
    with pytest.raises(PolicyError) as info:
        load_policy_set(root)
    exc = info.value
    assert isinstance(exc, GatewayError) and exc.status == 422 and exc.code == "invalid_policy"
    assert exc.errors == (f"{root / 'routing.yaml'}:3: unknown field `colour` (expected one of: name, description, "
                          "match, route, deny, max_tokens, cache, fallbacks, reference_model)",)
    assert exc.errors[0] in exc.message
    # the non-raising variant returns the same problems
    policy, problems = read_policy_set(root)
    assert policy is None and problems == list(exc.errors)


def test_classify_yaml_is_optional(tmp_path: Path) -> None:
    models = MODELS.replace(", code: 0.7}", "}").replace(", code: 0.9}", "}")
    policy = load_policy_set(write_policy(tmp_path / "p", models=models, classify=None))
    assert policy.classifier.categories == () and policy.classifier.default_category == "chat"


# --------------------------------------------------------------------------------- each `check` error kind


def test_unknown_field_in_each_file(tmp_path: Path) -> None:
    models = MODELS.replace("    tier: 2\n    capabilities: [tools, json_object]\n    scores: {chat: 0.8, code: 0.7}",
                            "    tier: 2\n    capabilities: [tools, json_object]\n    scores: {chat: 0.8, code: 0.7}\n"
                            "    price: 3")
    err = only_error(write_policy(tmp_path / "m", models=models))
    assert err.startswith(f"{tmp_path / 'm' / 'models.yaml'}:15: unknown field `price`")
    err = only_error(write_policy(tmp_path / "c", classify=CLASSIFY.replace("long_context_tokens", "long_ctx")))
    assert err.startswith(f"{tmp_path / 'c' / 'classify.yaml'}:2: unknown field `long_ctx`")
    routing = "rules:\n  - name: a\n    match: {tenant: x, categry: [code]}\n    route: smallest_capable\n"
    err = only_error(write_policy(tmp_path / "r", routing=routing))
    assert err.startswith(f"{tmp_path / 'r' / 'routing.yaml'}:3: unknown field `categry`")
    assert "expected one of: tenant, team, key_id, headers, model" in err


def test_wrong_types(tmp_path: Path) -> None:
    err = only_error(write_policy(tmp_path / "a", models=MODELS.replace("context_window: 8192\n    tier: 2",
                                                                        "context_window: lots\n    tier: 2", 1)))
    assert err == f"{tmp_path / 'a' / 'models.yaml'}:11: `context_window`: expected integer, got string 'lots'"
    routing = "rules:\n  - name: a\n    route: smallest_capable\n    max_tokens: [1]\n"
    err = only_error(write_policy(tmp_path / "b", routing=routing))
    assert err == f"{tmp_path / 'b' / 'routing.yaml'}:4: `max_tokens`: expected integer | null, got list list"
    # a mapping key's value (msgspec reports `[...]`) is pinned to its own line
    err = only_error(write_policy(tmp_path / "c", models=MODELS.replace("scores: {chat: 0.9, code: 0.9}",
                                                                        "scores:\n      chat: 0.9\n      code: high")))
    assert err == f"{tmp_path / 'c' / 'models.yaml'}:28: `code`: expected number, got string 'high'"


def test_unknown_models_everywhere_they_are_named(tmp_path: Path) -> None:
    routing = """\
        defaults: {reference_model: gpt-9}
        rules:
          - name: a
            match: {model: [claude]}
            route: {model: llama}
            fallbacks: [tiny, mistral]
          - name: b
            route: {smallest_capable: {candidates: [tiny, phi]}}
            reference_model: falcon
        """
    errors = errors_of(write_policy(tmp_path / "p", routing=routing))
    r = tmp_path / "p" / "routing.yaml"
    assert [e.split(" (models and aliases")[0] for e in errors] == [
        f"{r}:1: unknown reference model `gpt-9`",
        f"{r}:4: unknown model `claude`",
        f"{r}:5: unknown model `llama`",
        f"{r}:6: unknown fallback model `mistral`",
        f"{r}:8: unknown candidate `phi`",
        f"{r}:9: unknown reference model `falcon`",
    ]
    assert "(models and aliases: tiny, mid, mid2, big, quick, best)" in errors[0]


def test_duplicate_rule_names_and_models(tmp_path: Path) -> None:
    routing = "rules:\n  - name: a\n    match: {tenant: x}\n  - name: b\n    match: {tenant: y}\n" \
              "  - name: a\n    match: {tenant: z}\n"
    err = only_error(write_policy(tmp_path / "r", routing=routing))
    assert err == f"{tmp_path / 'r' / 'routing.yaml'}:6: duplicate rule name `a` (first at line 2)"
    models = MODELS.replace("  - name: mid2\n", "  - name: mid\n")
    err = only_error(write_policy(tmp_path / "m", models=models))
    assert err == f"{tmp_path / 'm' / 'models.yaml'}:15: duplicate model `mid` (first at line 9)"


def test_rule_shadowed_by_a_catch_all(tmp_path: Path) -> None:
    routing = """\
        rules:
          - name: everything
            route: smallest_capable
          - name: code
            match: {category: [code]}
            route: {model: big}
        """
    err = only_error(write_policy(tmp_path / "p", routing=routing))
    r = tmp_path / "p" / "routing.yaml"
    assert err == f"{r}:4: rule `code` can never match: rule `everything` ({r}:2) matches every request"


def test_rule_shadowed_by_a_broader_rule(tmp_path: Path) -> None:
    routing = """\
        rules:
          - name: hard
            match: {category: [code, math], prompt_tokens: {min: 100}}
          - name: code-long
            match: {category: [code], prompt_tokens: {min: 500, max: 900}, tenant: acme}
          - name: math-short
            match: {category: [math], prompt_tokens: {max: 99}}
          - name: alias-requests
            match: {requested: alias}
          - name: quick
            match: {model: quick}
        """
    errors = errors_of(write_policy(tmp_path / "p", routing=routing))
    r = tmp_path / "p" / "routing.yaml"
    assert errors == [
        f"{r}:4: rule `code-long` can never match: rule `hard` ({r}:2) matches every request `code-long` would",
        f"{r}:10: rule `quick` can never match: rule `alias-requests` ({r}:8) matches every request `quick` would",
    ]


def test_fallback_cycles(tmp_path: Path) -> None:
    models = MODELS.replace("    scores: {chat: 0.8, code: 0.7}\n", "    scores: {chat: 0.8, code: 0.7}\n"
                            "    fallbacks: [big]\n")
    models = models.replace("    scores: {chat: 0.9, code: 0.9}\n", "    scores: {chat: 0.9, code: 0.9}\n"
                            "    fallbacks: [quick]\n")
    err = only_error(write_policy(tmp_path / "p", models=models))
    assert err == f"{tmp_path / 'p' / 'models.yaml'}:8: fallback cycle: tiny -> mid -> big -> tiny"
    models = MODELS.replace("fallbacks: [mid]", "fallbacks: [tiny]")
    err = only_error(write_policy(tmp_path / "q", models=models))
    assert err == f"{tmp_path / 'q' / 'models.yaml'}:8: model `tiny` cannot fall back to itself"


def test_alias_problems(tmp_path: Path) -> None:
    models = MODELS.replace("  best: big\n", "  best: gpt-9\n  mid: big\n  auto: tiny\n  other: quick\n")
    models = models.replace("    fallbacks: [mid]\n", "    fallbacks: [mid]\n    aliases: [quick]\n")
    errors = errors_of(write_policy(tmp_path / "p", models=models))
    m = tmp_path / "p" / "models.yaml"
    assert errors == [
        f"{m}:29: alias `quick` is defined twice (first at line 9)",
        f"{m}:30: alias `best` points to `gpt-9`, which is not a model (models: tiny, mid, mid2, big)",
        f"{m}:31: alias `mid` clashes with the model of the same name (line 10)",
        f"{m}:32: `auto` is reserved; it cannot be an alias",
        f"{m}:33: alias `other` points to `quick`, which is an alias; point it to a model",
    ]


def test_classifier_problems(tmp_path: Path) -> None:
    classify = """\
        categories:
          code:
            signals:
              - {regex: 'def (', weight: 2}
              - {structure: code_block}
              - {weight: 3}
              - {keywords: ['!!']}
        complexity:
          signals:
            - {category: [cooking]}
            - {capabilities: [telepathy]}
            - {prompt_tokens: {min: 10, max: 5}}
          tiers:
            - {tier: 1, min_score: 0}
            - {tier: 2, min_score: 0}
        """
    errors = errors_of(write_policy(tmp_path / "p", classify=classify))
    c = tmp_path / "p" / "classify.yaml"
    assert [e.split(" (known")[0] for e in errors] == [
        f"{c}:4: invalid regular expression: missing ), unterminated subpattern at position 4",
        f"{c}:5: unknown structure `code_block`",
        f"{c}:6: a signal needs at least one condition (keywords, regex, structure, ...)",
        f"{c}:7: keyword '!!' has no letters or digits; it can never match",
        f"{c}:10: unknown category `cooking`",
        f"{c}:11: unknown capability `telepathy`",
        f"{c}:12: empty range: min 10 > max 5; it can never match",
        f"{c}:13: tiers 1 and 2 have the same min_score 0",
    ]


def test_rule_problems(tmp_path: Path) -> None:
    routing = """\
        rules:
          - name: a
            match: {category: [cooking], capabilities: [telepathy], requested: [everything]}
          - name: b
            deny: "no"
            route: smallest_capable
          - name: c
            route: {model: tiny, smallest_capable: {}}
          - name: d
            route: {smallest_capable: {min_tier: 7}}
          - name: e
            match: {tier: {min: 9}}
          - name: f
            match: {requested: [auto], model: [tiny]}
          - name: g
            cache: {ttl_s: 0}
            max_tokens: 0
        """
    errors = errors_of(write_policy(tmp_path / "p", routing=routing))
    r = tmp_path / "p" / "routing.yaml"
    assert [e.split(" (known")[0] for e in errors] == [
        f"{r}:3: unknown requested kind `everything`",
        f"{r}:3: unknown category `cooking`",
        f"{r}:3: unknown capability `telepathy`",
        f"{r}:6: a deny rule cannot also set `route`",
        f"{r}:8: `route` needs exactly one of `smallest_capable`, `cheapest_above` or `model`",
        f"{r}:10: no candidate has tier >= 7 (highest: 3); the rule can never route",
        f"{r}:12: the classifier's highest tier is 3; this can never match",
        f"{r}:14: `requested` and `model` contradict each other; the rule can never match",
        f"{r}:17: `max_tokens` must be >= 1",
        f"{r}:16: `ttl_s` must be >= 1 (use `no-store` to disable caching)",
    ]


def test_yaml_problems(tmp_path: Path) -> None:
    err = only_error(write_policy(tmp_path / "a", routing="rules:\n  - name: a\n    match: {tenant: [x\n"))
    assert err.startswith(f"{tmp_path / 'a' / 'routing.yaml'}:4: invalid YAML")
    err = only_error(write_policy(tmp_path / "b", routing="rules:\n  - name: a\n    name: b\n"))
    assert err == f"{tmp_path / 'b' / 'routing.yaml'}:3: duplicate key `name` (first at line 2)"
    root = write_policy(tmp_path / "c")
    (root / "routing.yaml").unlink()
    assert only_error(root) == f"{root / 'routing.yaml'}:1: missing policy file"
    err = only_error(write_policy(tmp_path / "d", routing="- just a list\n"))
    assert err == f"{tmp_path / 'd' / 'routing.yaml'}:1: expected mapping, got list list"
    errors = errors_of(write_policy(tmp_path / "e", models="models: []\n"))
    assert errors[0] == f"{tmp_path / 'e' / 'models.yaml'}:1: the catalogue has no models"


def test_all_errors_of_a_file_are_reported_at_once(tmp_path: Path) -> None:
    routing = "rules:\n  - name: a\n    bogus: 1\n  - name: b\n    route: {model: nope}\n  - name: c\n    deny: ''\n"
    errors = errors_of(write_policy(tmp_path / "p", routing=routing))
    assert [int(e.split(":")[1]) for e in errors] == [3, 5, 7]
