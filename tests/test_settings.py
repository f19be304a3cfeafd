from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import SettingsError, load_settings

pytestmark = pytest.mark.pure


def test_embedded_defaults_have_two_simulated_pools() -> None:
    s = load_settings(env={})
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert [p.model for p in s.pools] == ["demo-small", "demo-large"]
    assert all(p.launch is not None and p.launch.engine == "sim" for p in s.pools)


def test_yaml_then_env_then_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        "port: 9000\nupstream_timeout_s: 12.5\npools:\n"
        "  - name: gpu\n    model: llama-70b\n    replicas: [http://10.1.2.3:8000/, http://10.1.2.4:8000]\n"
    )
    s = load_settings(cfg, env={"GATEWAY_PORT": "9100"})
    assert s.port == 9100 and s.upstream_timeout_s == 12.5
    assert s.pools[0].replicas == ("http://10.1.2.3:8000/", "http://10.1.2.4:8000")
    assert load_settings(cfg, env={"GATEWAY_CONFIG": "/nonexistent"}, overrides={"port": 1}).port == 1
    assert load_settings(env={"GATEWAY_CONFIG": str(cfg)}).port == 9000


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("prot: 1\n", "unknown field `prot`"),
        ("port: many\n", "Expected `int`"),
        ("pools:\n  - name: a\n    model: m\n", "neither replicas nor launch"),
        ("pools:\n  - {name: a, model: m, replicas: [ftp://x]}\n", "not an http(s) URL"),
        ("pools:\n  - {name: a, model: m, replicas: [http://x]}\n  - {name: a, model: n, replicas: [http://y]}\n",
         "duplicate pool name: a"),
        ("pools:\n  - {name: a, model: m, runner: embed, replicas: [http://x]}\n", "Invalid enum value 'embed'"),
        ("pools:\n  - {name: a, model: m, runner: pooling, launch: {engine: sim}}\n",
         "runner pooling needs engine vllm or vllm-cpu"),
        ("- 1\n", "must be a mapping"),
        ("port: [\n", "not valid YAML"),
    ],
)
def test_bad_config_is_refused_with_a_reason(tmp_path: Path, text: str, needle: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(SettingsError, match=None) as info:
        load_settings(cfg, env={})
    assert needle in str(info.value)


def test_a_pool_says_what_its_engine_runs(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("pools:\n  - {name: chat, model: c, replicas: [http://x]}\n"
                   "  - {name: embed, model: e, runner: pooling, replicas: [http://y]}\n")
    assert [p.runner for p in load_settings(cfg, env={}).pools] == ["generate", "pooling"]


def test_bad_env_value_is_refused() -> None:
    with pytest.raises(SettingsError, match="port"):
        load_settings(env={"GATEWAY_PORT": "eighty"})


def test_deploy_example_is_valid() -> None:
    example = Path(__file__).resolve().parents[1] / "deploy" / "gateway.example.yaml"
    s = load_settings(example, env={})
    assert [p.name for p in s.pools] == ["small", "large", "sim"]
    assert s.pools[0].replicas and s.pools[2].launch is not None


@pytest.mark.parametrize("name", ["pools.gpu.example.yaml", "pools.cpu.example.yaml"])
def test_pool_examples_are_valid(name: str) -> None:
    s = load_settings(Path(__file__).resolve().parents[1] / "deploy" / name, env={})
    assert all(p.launch is not None or p.replicas for p in s.pools)
