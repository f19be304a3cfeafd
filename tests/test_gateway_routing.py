"""Routing through the running gateway: the shipped demo policy, fallbacks, and hot reload."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.routing import PolicyStore, install_sighup
from router import features
from router.policy import default_policy_dir
from router.predictor import Head, predictor_bytes, prior
from tests.gateway_process import GatewayProcess, start_gateway
from workers.launcher import free_port
from workers.pool import Pool, Pools

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}


def routed(gw: GatewayProcess, **body: Any) -> tuple[str, str]:
    r = httpx.post(gw.api + "/chat/completions", json={"max_tokens": 4, **body}, timeout=30, headers=gw.auth)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == r.headers["x-gateway-model"]
    return r.headers["x-gateway-model"], r.headers["x-gateway-route"]


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def parse_route(header: str) -> tuple[str, dict[str, float]]:
    """`x-gateway-route`: the rule, then `; name=value` pairs (the threshold, each candidate's prediction)."""
    rule, *pairs = header.split("; ")
    values: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        assert sep and name and name not in values, header
        values[name] = float(value)
    return rule, values


def implied(values: dict[str, float], fitting: tuple[str, ...] = ("demo-small", "demo-large")) -> str | None:
    """The model the header's threshold implies: the cheapest fitting candidate predicted at least `min`
    (the demo models' prices rise in catalogue order), else the one predicted best. None when a cheaper
    candidate's prediction is too close to `min` to tell: the header rounds both to two decimals."""
    for m in fitting:
        if abs(values[m] - values["min"]) < 0.01 and m != fitting[-1]:
            return None
        if values[m] >= values["min"]:
            return m
    return max(fitting, key=lambda m: values[m])


def check_predicted(header: str, rule: str, model: str, fitting: tuple[str, ...] = ("demo-small", "demo-large"),
                    target: float = 0.55) -> dict[str, float]:
    """A header of a rule that routed on predicted quality: numbers in [0, 1], the threshold the policy's
    `quality_target` gives (two decimals each, so within 0.01), and `model` the one it implies."""
    got, values = parse_route(header)
    assert got == rule, header
    assert list(values) == ["min", "demo-small", "demo-large"], header  # the threshold, then catalogue order
    assert all(0.0 <= v <= 1.0 for v in values.values()), header
    assert abs(values["min"] - target * max(values[m] for m in fitting)) <= 0.01, header
    assert implied(values, fitting) in (model, None), header
    return values


ONLY_LARGE = ("demo-large",)  # tools and JSON schema: demo-small lacks them, whatever it is predicted to do
SCHEMA = {"type": "json_schema", "json_schema": {"name": "u", "schema": {"type": "object"}}}


# Prompts whose routing policies/tests/demo.yaml pins for the shipped predictor.
@pytest.mark.parametrize(
    ("body", "model", "rule", "fitting"),
    [
        ({"model": "auto", "messages": ask("What is 2+2?")}, "demo-small", "learned", None),
        ({"model": "auto", "messages": ask("What is 17 * 23 + 4?")}, "demo-small", "learned", None),
        ({"model": "auto", "messages": ask("Show that the square root of 2 is irrational.")}, "demo-large",
         "learned", None),
        ({"model": "auto", "messages": ask("Why does this fail?\n```python\ndef add(a, b):\n    return a +\n```")},
         "demo-large", "learned", None),
        ({"model": "auto", "messages": ask("Explain why the sky is blue, step by step.")}, "demo-large", "learned",
         None),
        ({"model": "auto", "messages": ask("What's the weather in Paris?"), "tools": [TOOL]}, "demo-large", "learned",
         ONLY_LARGE),
        ({"model": "auto", "messages": ask("Give me a user record."), "response_format": SCHEMA}, "demo-large",
         "learned", ONLY_LARGE),
        ({"model": "auto", "messages": ask("Tell me a story. " * 300)}, "demo-large", "long-context", ONLY_LARGE),
        ({"model": "auto", "messages": ask("Hello!")}, "demo-small", "short-chat", None),
        ({"model": "fast", "messages": ask("Hi")}, "demo-small", "honour-requested", None),
        ({"model": "smart", "messages": ask("Hi")}, "demo-large", "honour-requested", None),
        ({"model": "demo-large", "messages": ask("Hi")}, "demo-large", "honour-requested", None),
    ],
)
def test_the_demo_policy_routes_as_described(gateway: GatewayProcess, body: dict[str, Any], model: str,
                                             rule: str, fitting: tuple[str, ...] | None) -> None:
    served, header = routed(gateway, **body)
    assert served == model, header
    if rule in ("learned", "long-context"):  # the rules that route on predicted quality
        check_predicted(header, rule, model, fitting or ("demo-small", "demo-large"))
    else:
        assert header == rule


def test_a_request_no_model_can_serve_is_400_saying_why(gateway: GatewayProcess) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        openai.OpenAI(base_url=gateway.api, api_key=gateway.key, max_retries=0).chat.completions.create(
            model="fast", messages=ask("Hi"), tools=[TOOL])  # type: ignore[list-item]
    message = info.value.response.json()["error"]["message"]
    assert "`demo-small` does not support tool calls" in message


def test_the_long_context_rule_caps_max_tokens(tmp_path: Path) -> None:
    # Simulated engines at their default speed (0.2 ms a token), so 2,048 tokens come quickly.
    gw = start_gateway(tmp_path, {"pools": [
        {"name": "small", "model": "demo-small", "launch": {"replicas": 1}},
        {"name": "large", "model": "demo-large", "launch": {"replicas": 1, "args": ["--max-model-len", "8192"]}},
    ]})
    try:
        body = {"model": "auto", "messages": ask("Tell me a story. " * 300), "max_tokens": 5000}
        r = httpx.post(gw.api + "/chat/completions", timeout=30, json=body, headers=gw.auth)
        check_predicted(r.headers["x-gateway-route"], "long-context", "demo-large", ONLY_LARGE)
        assert r.json()["usage"]["completion_tokens"] == 2048  # the simulator writes exactly max_tokens
        body["max_tokens"] = 100  # under the cap: unchanged
        assert httpx.post(gw.api + "/chat/completions", timeout=30, json=body, headers=gw.auth).json()["usage"][
            "completion_tokens"] == 100
    finally:
        gw.stop()


def test_admin_explain_gives_the_trace(gateway: GatewayProcess) -> None:
    r = httpx.post(gateway.base_url + "/admin/route/explain", json={"model": "auto", "messages": ask("Hi"),
                                                                     "tools": [TOOL]}, headers=gateway.auth)
    out = r.json()
    assert out["decision"]["model"] == "demo-large" and out["decision"]["rule"] == "learned"
    rejected = [t for t in out["trace"] if t["step"] == "candidate" and not t["ok"]]
    assert rejected == [
        {"step": "candidate", "subject": "demo-small", "ok": False, "detail": "does not support tool calls"}
    ]
    # The quality section: every head's prediction, the threshold the rule applied, the policy's knob and
    # which predictor said so (the one /admin/policy reports).
    quality = out["quality"]
    predicted = quality["predicted"]
    assert set(predicted) == {"demo-small", "demo-large"}
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in predicted.values())
    assert quality["target"] == 0.55
    # demo-small cannot serve tools: the threshold is relative to the best candidate that can
    assert quality["min"] == pytest.approx(0.55 * predicted["demo-large"], abs=1e-3)
    assert out["decision"]["quality"] == predicted and out["decision"]["quality_min"] == quality["min"]
    status = httpx.get(gateway.base_url + "/admin/policy", headers=gateway.auth).json()
    assert quality["predictor"] == status["predictor"]["name"] == status["predictor"]["sha256"][:12]
    choice = next(t for t in out["trace"] if t["step"] == "choice")
    assert choice["subject"] == "demo-large" and choice["detail"].startswith("the only candidate that fits (predicted ")
    # a rule that does not route on the predictor: predictions shown, no threshold
    out = httpx.post(gateway.base_url + "/admin/route/explain", json={"model": "auto", "messages": ask("Hi")},
                     headers=gateway.auth).json()
    assert out["decision"]["rule"] == "short-chat" and out["decision"]["quality"] is None
    assert out["quality"]["min"] is None and set(out["quality"]["predicted"]) == {"demo-small", "demo-large"}
    # the policy's request limits, as on a call: past them, no decision to explain
    r = httpx.post(gateway.base_url + "/admin/route/explain", json={"messages": ask("Hi"), "max_tokens": 100_000},
                   headers=gateway.auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


@pytest.fixture
def own_policies(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(default_policy_dir(), target, ignore=shutil.ignore_patterns("README.md"))
    return target


def test_fallback_model_when_the_chosen_pool_is_down(tmp_path: Path, own_policies: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gw = start_gateway(tmp_path / "gw", {
        "policies_dir": str(own_policies),
        "pools": [{"name": "small", "model": "demo-small", "replicas": [dead]},
                  {"name": "large", "model": "demo-large", "launch": {"replicas": 1}}],
    }, ready=False)
    try:
        # demo-small's pool is down: routing chooses demo-large for `auto` on its own ...
        assert routed(gw, model="auto", messages=ask("Hi")) == ("demo-large", "short-chat")
        # ... even where the predictor's threshold would take demo-small (a healthy pool is a hard constraint)
        model, header = routed(gw, model="auto", messages=ask("What is 2+2?"))
        values = check_predicted(header, "learned", "demo-large", ONLY_LARGE)
        assert model == "demo-large" and implied(values) == "demo-small"
        # ... and a client naming demo-small is served by its fallback, demo-large.
        assert routed(gw, model="demo-small", messages=ask("Hi"))[0] == "demo-large"
    finally:
        gw.stop()


def wait_for(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_hot_reload_swaps_good_files_and_keeps_the_last_good_policy(tmp_path: Path, own_policies: Path) -> None:
    gw = start_gateway(tmp_path / "gw", {"policies_dir": str(own_policies)})

    def status() -> dict[str, Any]:
        return httpx.get(gw.base_url + "/admin/policy", headers=gw.auth).json()  # type: ignore[no-any-return]

    def sum_question() -> tuple[str, str]:
        return routed(gw, model="auto", messages=ask("What is 2+2?"))  # demo-small by `learned` when shipped

    try:
        first = status()
        assert first["quality_target"] == 0.55 and first["last_error"] is None
        _, header = sum_question()
        check_predicted(header, "learned", "demo-small")
        routing = own_policies / "routing.yaml"
        good = routing.read_text()
        # An edit of the cost/quality knob: 1.0 takes the model predicted best.
        assert good.count("quality_target: 0.55") == 1
        routing.write_text(good.replace("quality_target: 0.55", "quality_target: 1.0"))
        wait_for(lambda: status()["hash"] != first["hash"])
        assert status()["quality_target"] == 1.0
        _, header = sum_question()
        values = check_predicted(header, "learned", "demo-large", target=1.0)  # min: demo-large's prediction
        assert values["demo-large"] > values["demo-small"]
        # A broken edit: refused with file:line, the last good policy stays in force.
        routing.write_text(good.replace("route: requested", "route: requestd"))
        wait_for(lambda: status()["last_error"])
        now = status()
        assert any(f"{routing}:" in e for e in now["last_error"])
        assert now["quality_target"] == 1.0
        assert sum_question()[0] == "demo-large"
        assert "policy reload refused" in gw.log()

        # Back to the shipped files: the shipped policy, hash and all.
        routing.write_text(good)
        wait_for(lambda: status()["hash"] == first["hash"])
        assert sum_question()[0] == "demo-small"
        # A new predictor alone is a new policy: it predicts demo-small 0.2 and demo-large 0.8 for everything,
        # so with the shipped target (0.55 x 0.8) demo-small is never good enough.
        artefact = own_policies / "predictor" / "predictor.json"
        constant = predictor_bytes({"demo-small": Head(weights=[0.0] * features.SIZE, bias=0.2),
                                    "demo-large": Head(weights=[0.0] * features.SIZE, bias=0.8)})
        artefact.write_bytes(constant)
        wait_for(lambda: status()["hash"] != first["hash"])
        swapped = status()
        assert swapped["predictor"]["sha256"] == hashlib.sha256(constant).hexdigest()
        assert swapped["predictor"]["name"] != first["predictor"]["name"]
        assert swapped["files"] == first["files"] and str(artefact) in swapped["files"]
        by_constant = ("demo-large", "learned; min=0.44; demo-small=0.20; demo-large=0.80")
        assert sum_question() == by_constant
        # A broken predictor is refused like a broken routing.yaml, at the line of routing.yaml that names it
        # (or, for a missing head, the rule that needs it): the last good policy stays in force.
        lines = good.splitlines()
        predictor_line = next(i for i, t in enumerate(lines, 1) if t.strip().startswith("predictor:"))
        learned = lines.index("  - name: learned")
        learned_route = next(i for i, t in enumerate(lines[learned:], learned + 1) if t.startswith("    route:"))
        at_predictor, at_learned = f"{routing}:{predictor_line}: ", f"{routing}:{learned_route}: "
        wrong_size = {m: Head(weights=[0.0] * 3, bias=0.5) for m in ("demo-small", "demo-large")}
        for broken, expected in (
            (b"{not json", f"{at_predictor}predictor {artefact}: not a quality predictor"),
            (predictor_bytes(wrong_size), f"{at_predictor}predictor {artefact}: head `demo-large` has 3 weights, "
                                          f"not {features.SIZE}"),
            (prior(["demo-small"]), f"{at_learned}candidate `demo-large` has no head in the predictor"),
        ):
            artefact.write_bytes(broken)
            wait_for(lambda: status()["last_error"])
            refused = status()
            assert refused["hash"] == swapped["hash"]
            assert any(e.startswith(expected) for e in refused["last_error"]), (expected, refused["last_error"])
            assert sum_question() == by_constant
            artefact.write_bytes(constant)  # the policy in force again: no swap, and the error clears
            wait_for(lambda: status()["last_error"] is None)
            assert status()["hash"] == swapped["hash"]
    finally:
        gw.stop()


async def test_sighup_reloads(tmp_path: Path, own_policies: Path) -> None:
    store = PolicyStore(own_policies, Pools([Pool("small", "demo-small", []), Pool("large", "demo-large", [])]))
    before = store.active.policy.hash
    install_sighup(store)
    routing = own_policies / "routing.yaml"
    routing.write_text(routing.read_text() + "\n# edited\n")
    os.kill(os.getpid(), signal.SIGHUP)
    for _ in range(50):
        await asyncio.sleep(0.01)
        if store.active.policy.hash != before:
            break
    assert store.active.policy.hash != before
    asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)


def test_a_bad_policy_at_start_refuses_to_start(tmp_path: Path, own_policies: Path) -> None:
    (own_policies / "models.yaml").write_text("models:\n  - name: x\n    pool: small\n    tierr: 1\n")
    with pytest.raises(RuntimeError, match=r"models.yaml:4"):
        start_gateway(tmp_path / "gw", {"policies_dir": str(own_policies)})
