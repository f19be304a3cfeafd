"""A gateway whose pools serve models the catalogue does not list (simulated vLLM workers): `auto` and a
request without `model` are routed among the derived models, /v1/models carries the workers' own fields,
and a catalogue written by `gateway init --from-pools` takes over on the policy's hot reload.
tests/test_real_vllm_models.py checks the same against a real vLLM engine."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.cli import main as gateway_main
from router.derive import DERIVED_RULE
from router.policy import default_policy_dir
from tests.gateway_process import GatewayProcess, start_gateway

HELLO: Any = [{"role": "user", "content": "Hello there"}]
POOLS = [
    {"name": "a", "model": "org/alpha",
     "launch": {"engine": "sim", "args": ["--max-model-len", "2048", "--model-root", "/models/alpha"]}},
    {"name": "b", "model": "beta", "launch": {"engine": "sim", "args": ["--max-model-len", "512"]}},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Path, Path]]:
    work = tmp_path_factory.mktemp("served-models")
    policies = work / "policies"  # the shipped policy (demo-small, demo-large), which these pools do not serve
    shutil.copytree(default_policy_dir(), policies)
    gw = start_gateway(work, {"policies_dir": str(policies), "pools": POOLS})
    yield gw, policies, work / "gateway.yaml"
    gw.stop()


def sdk(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.api, api_key=gw.key, max_retries=0)


def replica_url(gw: GatewayProcess, pool: str) -> str:
    return str(httpx.get(gw.base_url + "/readyz").json()["pools"][pool]["replicas"][0]["url"])


def without_created(entry: dict[str, Any]) -> dict[str, Any]:
    return {**{k: v for k, v in entry.items() if k != "created"},
            "permission": [{k: v for k, v in p.items() if k != "created"} for p in entry["permission"]]}


def wait_for(check: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_auto_and_no_model_route_among_the_pools_models(setup: tuple[GatewayProcess, Path, Path]) -> None:
    gw, policies, _ = setup
    raw = sdk(gw).chat.completions.with_raw_response.create(model="auto", messages=HELLO, max_tokens=4)
    assert raw.http_response.status_code == 200
    assert raw.headers["x-gateway-route"] == DERIVED_RULE
    assert raw.parse().model == raw.headers["x-gateway-model"] in ("org/alpha", "beta")
    # No `model` at all, as vLLM accepts: `auto`.
    via = httpx.post(gw.api + "/chat/completions", headers=gw.auth, json={"messages": HELLO, "max_tokens": 4})
    assert via.status_code == 200 and via.headers["x-gateway-route"] == DERIVED_RULE
    # Past beta's 512 tokens: only org/alpha's window holds it.
    long = [{"role": "user", "content": "routing " * 700}]
    via = httpx.post(gw.api + "/chat/completions", headers=gw.auth, json={"messages": long, "max_tokens": 4})
    assert via.status_code == 200 and via.headers["x-gateway-model"] == "org/alpha"
    # The log says what is derived and which file to edit.
    log = gw.log()
    assert f"{policies / 'models.yaml'} lists no model a configured pool serves: `auto` routes among" in log
    assert "`org/alpha` (pool `a`, context window 2,048)" in log and "`beta` (pool `b`, context window 512)" in log
    status = httpx.get(gw.base_url + "/admin/policy", headers=gw.auth).json()
    assert status["auto"] == "derived"
    assert status["derived"] == [{"model": "org/alpha", "pool": "a", "context_window": 2048},
                                 {"model": "beta", "pool": "b", "context_window": 512}]


def test_models_carry_the_workers_fields(setup: tuple[GatewayProcess, Path, Path]) -> None:
    gw, _, _ = setup
    listed = httpx.get(gw.api + "/models", headers=gw.auth).json()
    assert listed["object"] == "list"
    entries = {e["id"]: e for e in listed["data"]}
    assert list(entries) == ["auto", "beta", "org/alpha"]
    for model, pool in (("org/alpha", "a"), ("beta", "b")):
        own = httpx.get(replica_url(gw, pool) + "/v1/models").json()["data"][0]
        # max_model_len, root, parent, owned_by, permission: the worker's; `created` is when it answered the
        # gateway's last health check (a worker's changes with every answer).
        assert without_created(entries[model]) == without_created(own)
        assert 0 <= own["created"] - entries[model]["created"] < 60
    assert entries["org/alpha"]["root"] == "/models/alpha" and entries["beta"]["max_model_len"] == 512
    assert entries["auto"]["owned_by"] == "gateway" and entries["auto"]["max_model_len"] == 2048
    # One model, as OpenAI serves it (a name with a slash included), through the SDK too.
    one = httpx.get(gw.api + "/models/org/alpha", headers=gw.auth)
    assert one.status_code == 200 and one.json() == entries["org/alpha"]
    retrieved = sdk(gw).models.retrieve("beta")
    assert (retrieved.id, retrieved.owned_by) == ("beta", "vllm")
    assert retrieved.model_extra is not None and retrieved.model_extra["max_model_len"] == 512
    missing = httpx.get(gw.api + "/models/demo-small", headers=gw.auth)  # catalogued, but no pool serves it
    assert missing.status_code == 404
    assert missing.json() == {"error": {
        "message": "The model `demo-small` does not exist. Valid models: auto, beta, org/alpha.",
        "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}
    with pytest.raises(openai.NotFoundError):
        sdk(gw).models.retrieve("nope")
    assert httpx.get(gw.api + "/models").status_code == 401  # a key, as for every /v1 path


def test_a_catalogue_from_init_takes_over_on_reload(setup: tuple[GatewayProcess, Path, Path],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    gw, policies, config = setup
    assert gateway_main(["init", "--from-pools", "--config", str(config)]) == 1  # the copied policy is there
    assert "already exist" in capsys.readouterr().err
    assert gateway_main(["init", "--from-pools", "--config", str(config), "--force"]) == 0
    out = capsys.readouterr().out
    assert "org/alpha: pool a, context window 2,048" in out and f"wrote {policies / 'models.yaml'}" in out

    def policy_in_force() -> bool:
        return bool(httpx.get(gw.base_url + "/admin/policy", headers=gw.auth).json()["auto"] == "policy")

    wait_for(policy_in_force, "the written catalogue to be loaded")
    raw = sdk(gw).chat.completions.with_raw_response.create(model="auto", messages=HELLO, max_tokens=4)
    assert raw.headers["x-gateway-route"] == "(implicit default)"  # the written routing.yaml's default
    assert [m.id for m in sdk(gw).models.list()] == ["auto", "org/alpha", "beta"]
