"""`gateway keys list` shows the development key beside the database's keys: its prefix, never the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.auth import keys
from gateway.cli import main
from gateway.settings import load_settings

pytestmark = pytest.mark.pure


def listing(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> str:
    assert main(["keys", "list", "--config", str(config), *argv]) == 0
    return capsys.readouterr().out


def test_the_development_key_is_listed_by_its_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("GATEWAY_DEV_KEY", "GATEWAY_DATABASE_URL", "GATEWAY_CONFIG", "GATEWAY_AUTH"):
        monkeypatch.delenv(name, raising=False)
    state = tmp_path / "state"
    config = tmp_path / "gateway.yaml"
    config.write_text(f"state_dir: {state}\n")
    assert listing(capsys, config).splitlines()[2:] == ["(none)"]  # listing never makes one
    assert not (state / keys.DEV_KEY_FILE).exists()

    dev = keys.dev_key(load_settings(config))  # as `gateway serve` makes it
    assert dev is not None
    assert main(["keys", "create", "--config", str(config), "--tenant", "acme", "--team", "red", "--role", "app",
                 "--name", "ci"]) == 0
    made = capsys.readouterr().out.strip()
    out = listing(capsys, config)
    assert dev.key not in out and made not in out
    header, _, first, second = out.splitlines()
    assert header.split() == ["id", "prefix", "tenant", "team", "role", "scope", "state", "created", "expires",
                              "limits", "name"]
    assert first.split()[:7] == ["dev", dev.key[:12] + "...", "default", "dev", "admin", "all", "active"]
    assert first.endswith(f"development key ({state / keys.DEV_KEY_FILE})")
    assert second.split()[1:7] == [made[:12] + "...", "acme", "red", "app", "tenant", "active"]
    assert second.endswith(" ci")

    listed = json.loads(listing(capsys, config, "--format", "json"))
    assert [(k["id"], k["prefix"], k["scope"], k["development"]) for k in listed] == [
        ("dev", dev.key[:12], "all", True), (listed[1]["id"], made[:12], "tenant", False)]
    assert dev.key not in json.dumps(listed)
    assert [k["id"] for k in json.loads(listing(capsys, config, "--format", "json", "--tenant", "acme"))] == \
        [listed[1]["id"]]


def test_a_development_key_from_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("GATEWAY_DATABASE_URL", raising=False)
    config = tmp_path / "gateway.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    monkeypatch.setenv("GATEWAY_DEV_KEY", "sk-short")
    out = listing(capsys, config)
    row = out.splitlines()[2]
    assert row.split()[:8] == ["dev", "sk-s...", "default", "dev", "admin", "all", "active", "-"]
    assert "sk-short" not in out and row.endswith("development key (setting)")
    monkeypatch.setenv("GATEWAY_DEV_KEY", "")  # no development key
    assert listing(capsys, config).splitlines()[2:] == ["(none)"]


def test_no_development_key_with_a_configured_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("GATEWAY_DEV_KEY", raising=False)
    state = tmp_path / "state"
    keys.dev_key(load_settings(env={}, overrides={"state_dir": str(state)}))  # a file from embedded days
    config = tmp_path / "gateway.yaml"
    config.write_text(f"state_dir: {state}\ndatabase_url: sqlite:///{tmp_path / 'own.db'}\nauto_migrate: true\n")
    assert listing(capsys, config).splitlines()[2:] == ["(none)"]  # the gateway would not accept it
