"""`gateway init --from-pools` against simulated vLLM workers: what it writes, what it asks, what it refuses."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from gateway.settings import load_settings
from router.policy import default_policy_dir, load_policy_set
from vllm_sim import SimConfig, SimServer


@pytest.fixture(scope="module")
def workers() -> Iterator[tuple[SimServer, SimServer]]:
    alpha = SimServer(SimConfig(model="org/alpha", max_model_len=2048, model_root="/models/alpha")).start()
    beta = SimServer(SimConfig(model="beta", max_model_len=512)).start()
    yield alpha, beta
    alpha.stop()
    beta.stop()


def settings_file(tmp_path: Path, pools: list[dict[str, Any]]) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"pools": pools, "policies_dir": str(tmp_path / "policies")}))
    return str(path)


def init(*args: str) -> int:
    return main(["init", "--from-pools", *args])


def test_it_writes_a_policy_that_loads_with_each_workers_window(
        tmp_path: Path, workers: tuple[SimServer, SimServer], capsys: pytest.CaptureFixture[str]) -> None:
    alpha, beta = workers
    config = settings_file(tmp_path, [
        {"name": "a", "model": "org/alpha", "replicas": [alpha.url]},
        # The first replica is down: the next one answers.
        {"name": "b", "model": "beta", "replicas": ["http://127.0.0.1:9", beta.url]},
        # Launched by the gateway, not running: its launch args say the window.
        {"name": "c", "model": "gamma", "launch": {"engine": "sim", "args": ["--max-model-len=4096"]}},
        {"name": "d", "model": "delta", "launch": {"engine": "sim"}},  # the simulator's default
    ])
    assert init("--config", config) == 0
    out = capsys.readouterr().out
    assert f"org/alpha: pool a, context window 2,048 (from {alpha.url}/v1/models)" in out
    assert f"beta: pool b, context window 512 (from {beta.url}/v1/models)" in out
    assert "gamma: pool c, context window 4,096 (from --max-model-len in its launch args)" in out
    assert "delta: pool d, context window 1,024 (from the simulator's default max_model_len)" in out
    folder = tmp_path / "policies"
    assert f"policies_dir: {folder}" in out and f"gateway policies check --policies {folder}" in out

    policy = load_policy_set(folder)  # as `gateway serve` loads it
    windows = {name: (m.pool, m.context_window, m.tier) for name, m in policy.models.items()}
    assert windows == {"org/alpha": ("a", 2048, 1), "beta": ("b", 512, 1), "gamma": ("c", 4096, 1),
                       "delta": ("d", 1024, 1)}
    assert policy.models["org/alpha"].capabilities == {"json_schema", "json_object", "logprobs", "n"}
    assert "/models/alpha" in policy.models["org/alpha"].description
    assert [r.name for r in policy.rules] == ["honour-requested"]
    assert sorted(p.name for p in folder.iterdir()) == ["classify.yaml", "models.yaml", "routing.yaml"]
    assert main(["policies", "check", "--config", config]) == 0  # no pool left out, none unknown
    assert "warning" not in capsys.readouterr().err


def test_existing_files_are_kept_without_force(tmp_path: Path, workers: tuple[SimServer, SimServer],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    config = settings_file(tmp_path, [{"name": "a", "model": "org/alpha", "replicas": [workers[0].url]}])
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "routing.yaml").write_text("# mine\n")
    assert init("--config", config) == 1
    err = capsys.readouterr().err
    assert f"{folder / 'routing.yaml'} already exists; nothing written (--force replaces them" in err
    assert sorted(p.name for p in folder.iterdir()) == ["routing.yaml"]
    assert (folder / "routing.yaml").read_text() == "# mine\n"
    assert init("--config", config, "--force") == 0
    assert load_policy_set(folder).models["org/alpha"].context_window == 2048
    # --policies writes elsewhere, whatever the settings say.
    assert init("--config", config, "--policies", str(tmp_path / "other")) == 0
    assert (tmp_path / "other" / "models.yaml").exists()


def test_a_window_nobody_can_tell_stops_it_unless_given(tmp_path: Path, workers: tuple[SimServer, SimServer],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    config = settings_file(tmp_path, [
        {"name": "a", "model": "org/alpha", "replicas": [workers[0].url]},
        {"name": "down", "model": "gone", "replicas": ["http://127.0.0.1:9"]},
        {"name": "ghost", "model": "ghost", "replicas": [workers[1].url]},  # its worker serves beta
        {"name": "v", "model": "big", "launch": {"engine": "vllm", "model_path": "/m"}},
    ])
    assert init("--config", config) == 1
    err = capsys.readouterr().err
    assert "gateway init: pool `down` (gone): http://127.0.0.1:9/v1/models: ConnectError" in err
    assert f"warning: pool `ghost`: {workers[1].url}/v1/models lists beta, not `ghost`" in err
    assert "pool `v` (big): launch args: no --max-model-len (vLLM reads it from the model's config)" in err
    assert "nothing written; start those workers, or give --context-window TOKENS" in err
    assert not (tmp_path / "policies").exists()

    assert init("--config", config, "--context-window", "4096") == 0
    out = capsys.readouterr().out
    assert "gone: pool down, context window 4,096 (from --context-window: http://127.0.0.1:9/v1/models" in out
    policy = load_policy_set(tmp_path / "policies")
    assert {n: m.context_window for n, m in policy.models.items()} == {
        "org/alpha": 2048, "gone": 4096, "ghost": 4096, "big": 4096}
    assert "not from a worker" in policy.models["gone"].description


def test_the_pools_api_key_is_sent(tmp_path: Path) -> None:
    """vLLM's --api-key guards /v1/models: the pool's key goes with the question."""

    class Guarded(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == "/v1/models" and self.headers.get("authorization") == "Bearer sk-worker"
            body = json.dumps({"object": "list", "data": [{"id": "tiny", "object": "model", "max_model_len": 777}]}
                              if ok else {"error": "Unauthorized"}).encode()
            self.send_response(200 if ok else 401)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Guarded)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        pool = {"name": "t", "model": "tiny", "replicas": [url]}
        assert init("--config", settings_file(tmp_path / "without", [pool])) == 1  # 401: not asked
        assert init("--config", settings_file(tmp_path / "with", [{**pool, "api_key": "sk-worker"}])) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert load_policy_set(tmp_path / "with" / "policies").models["tiny"].context_window == 777


# `gateway init DIR`: a copy of the shipped policies and a commented settings file.


def test_init_dir_writes_the_shipped_policies_and_a_settings_file_using_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "deploy"
    assert main(["init", str(target)]) == 0
    assert f"wrote {target / 'policies'}/" in capsys.readouterr().out
    shipped = default_policy_dir()
    for name in ("models.yaml", "classify.yaml", "routing.yaml", "prices.yaml", "predictor/predictor.json",
                 "judge/grading-prompt.md", "tests/demo.yaml"):
        assert (target / "policies" / name).read_bytes() == (shipped / name).read_bytes(), name
    assert not (target / "policies" / "__init__.py").exists()
    config = (target / "gateway.yaml").read_text()
    assert config.count("\n# ") > 10  # commented: every optional setting explained, off
    settings = load_settings(target / "gateway.yaml", env={})
    assert settings.policies_dir == str((target / "policies").resolve())
    assert settings.prices_file == str((target / "policies" / "prices.yaml").resolve())
    assert [p.name for p in settings.pools] == ["small", "large"]  # the embedded simulated pools
    # The copy is the shipped policy: the same hash, and its policy tests pass against it.
    assert load_policy_set(settings.policies_dir).hash == load_policy_set(shipped).hash
    assert main(["policies", "test", "--config", str(target / "gateway.yaml")]) == 0


def test_init_dir_replaces_nothing_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path)]) == 0
    edited = tmp_path / "policies" / "routing.yaml"
    edited.write_text("# mine\n")
    (tmp_path / "gateway.yaml").unlink()
    capsys.readouterr()
    assert main(["init", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{edited} already exist" not in err and str(edited) in err and "--force replaces them" in err
    assert edited.read_text() == "# mine\n" and not (tmp_path / "gateway.yaml").exists()  # nothing written
    assert main(["init", str(tmp_path), "--force"]) == 0
    assert edited.read_bytes() == (default_policy_dir() / "routing.yaml").read_bytes()
    assert (tmp_path / "gateway.yaml").is_file()


@pytest.mark.parametrize("args", [[], ["DIR", "--from-pools"]], ids=["neither", "both"])
def test_init_wants_dir_or_from_pools(
        tmp_path: Path, args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", *(str(tmp_path / a) if a == "DIR" else a for a in args)]) == 2
    assert "give one of DIR" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
