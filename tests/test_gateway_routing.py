"""Routing through the running gateway: the shipped demo policy, fallbacks, and hot reload."""

from __future__ import annotations

import asyncio
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
from router.policy import default_policy_dir
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


@pytest.mark.parametrize(
    ("body", "model", "rule"),
    [
        ({"model": "auto", "messages": ask("Hi! How are you today?")}, "demo-small", "default"),
        ({"model": "auto", "messages": ask("Fix this:\n```python\ndef f(:\n    pass\n```")}, "demo-large",
         "hard-tasks"),
        ({"model": "auto", "messages": ask("Solve the integral of x^2 dx from 0 to 3.")}, "demo-large", "hard-tasks"),
        ({"model": "auto", "messages": ask("Look up the weather."), "tools": [TOOL]}, "demo-large",
         "tools-and-structured-output"),
        ({"model": "auto", "messages": ask("Give me a user."),
          "response_format": {"type": "json_schema", "json_schema": {"name": "u", "schema": {"type": "object"}}}},
         "demo-large", "tools-and-structured-output"),
        ({"model": "auto", "messages": ask("Tell me a story. " * 300)}, "demo-large", "long-context"),
        ({"model": "fast", "messages": ask("Hi")}, "demo-small", "honour-requested"),
        ({"model": "smart", "messages": ask("Hi")}, "demo-large", "honour-requested"),
        ({"model": "demo-large", "messages": ask("Hi")}, "demo-large", "honour-requested"),
    ],
)
def test_the_demo_policy_routes_as_described(gateway: GatewayProcess, body: dict[str, Any], model: str,
                                             rule: str) -> None:
    assert routed(gateway, **body) == (model, rule)


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
        assert r.headers["x-gateway-route"] == "long-context"
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
    assert out["decision"]["model"] == "demo-large" and out["decision"]["rule"] == "tools-and-structured-output"
    rejected = [t for t in out["trace"] if t["step"] == "candidate" and not t["ok"]]
    assert rejected == [
        {"step": "candidate", "subject": "demo-small", "ok": False, "detail": "does not support tool calls"}
    ]


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
        assert routed(gw, model="auto", messages=ask("Hi")) == ("demo-large", "default")
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
    try:
        first = httpx.get(gw.base_url + "/admin/policy", headers=gw.auth).json()
        assert routed(gw, model="auto", messages=ask("Hi")) == ("demo-small", "default")
        routing = own_policies / "routing.yaml"
        good = routing.read_text()
        # An edit that sends everything else to the large model.
        routing.write_text(good.replace("route: {smallest_capable: {min_tier: complexity}}",
                                        "route: {model: demo-large}"))
        wait_for(lambda: httpx.get(gw.base_url + "/admin/policy", headers=gw.auth).json()["hash"] != first["hash"])
        assert routed(gw, model="auto", messages=ask("Hi")) == ("demo-large", "default")
        # A broken edit: refused with file:line, the last good policy stays in force.
        routing.write_text(good.replace("route: requested", "route: requestd"))
        wait_for(lambda: httpx.get(gw.base_url + "/admin/policy", headers=gw.auth).json()["last_error"])
        status = httpx.get(gw.base_url + "/admin/policy", headers=gw.auth).json()
        assert any(f"{routing}:" in e for e in status["last_error"])
        assert routed(gw, model="auto", messages=ask("Hi")) == ("demo-large", "default")
        assert "policy reload refused" in gw.log()
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
