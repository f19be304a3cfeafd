"""The wheel, installed in a fresh virtual environment outside the checkout, gives a working `gateway` from any
directory: the shipped policies and the migrations come with it (the packages gateway_policies and
gateway_migrations, pyproject.toml), `gateway init DIR` copies them, and `gateway serve` answers through the
simulator with the embedded defaults.

Needs the package index (tests/package_support.py): when pip cannot install the wheel's dependencies the tests
fail, they are not skipped.
"""

from __future__ import annotations

import subprocess
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.gateway_process import DEV_KEY, start_gateway
from tests.package_support import ROOT, clean_env, install

pytestmark = pytest.mark.pypi

DATA_PACKAGES = {"gateway_policies": "policies", "gateway_migrations": "migrations"}


@dataclass(frozen=True)
class Installed:
    wheel: Path
    bin: Path  # the fresh environment's bin/
    elsewhere: Path  # a working directory outside the checkout

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bin / "gateway"), *args], cwd=self.elsewhere, env=clean_env(),
                              capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def installed(built_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("package")
    assert not base.resolve().is_relative_to(ROOT)
    bin_dir = install(built_wheel, base / "venv")
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    yield Installed(built_wheel, bin_dir, elsewhere)


def test_the_packages_list_names_every_package_of_the_tree() -> None:
    """pyproject.toml lists the packages (policies/ and migrations/ ship under other names): none forgotten."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    in_tree = {".".join(p.parent.relative_to(ROOT).parts)
               for top in ("gateway", "router", "workers", "vllm_sim") for p in (ROOT / top).rglob("__init__.py")}
    assert set(config["packages"]) == in_tree | set(DATA_PACKAGES)
    assert config["package-dir"] == DATA_PACKAGES


def test_the_wheel_holds_every_file_of_the_packages_and_the_shipped_data(installed: Installed) -> None:
    tracked = subprocess.run(["git", "ls-files", "gateway", "router", "workers", "vllm_sim", *DATA_PACKAGES.values()],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    renamed = {folder + "/": package + "/" for package, folder in DATA_PACKAGES.items()}
    expected = set()
    for path in tracked:
        for folder, package in renamed.items():
            if path.startswith(folder):
                path = package + path[len(folder):]
        expected.add(path)
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    assert expected <= names, sorted(expected - names)
    assert not [n for n in names if "__pycache__" in n or n.startswith(("policies/", "migrations/", "tests/"))]


def test_help_and_the_shipped_policies_from_another_directory(installed: Installed) -> None:
    helped = installed.run("--help")
    assert helped.returncode == 0 and "serve" in helped.stdout and "init" in helped.stdout, helped.stderr
    checked = installed.run("policies", "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "policies OK" in checked.stdout and "gateway_policies" in checked.stdout  # the installed copy
    tested = installed.run("policies", "test")
    assert tested.returncode == 0 and ", 0 failed" in tested.stdout, tested.stdout + tested.stderr


def test_db_upgrade_runs_the_installed_migrations(installed: Installed) -> None:
    url = f"sqlite+aiosqlite:///{installed.elsewhere / 'fresh.db'}"
    upgraded = installed.run("db", "--database-url", url, "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "(up to date)" in upgraded.stdout and "(none)" not in upgraded.stdout
    current = installed.run("db", "--database-url", url, "current")
    assert current.returncode == 0 and current.stdout == upgraded.stdout


def test_init_writes_an_editable_copy_that_checks(installed: Installed) -> None:
    written = installed.run("init", "mine")
    assert written.returncode == 0, written.stderr
    config = installed.elsewhere / "mine" / "gateway.yaml"
    assert (installed.elsewhere / "mine" / "policies" / "routing.yaml").is_file()
    checked = installed.run("policies", "check", "--config", str(config))
    assert checked.returncode == 0 and str(installed.elsewhere / "mine" / "policies") in checked.stdout, checked.stderr
    again = installed.run("init", "mine")
    assert again.returncode == 1 and "already exist" in again.stderr


def test_serve_answers_through_the_simulator_with_the_embedded_defaults(installed: Installed) -> None:
    gw = start_gateway(installed.elsewhere / "serve", gateway_bin=installed.bin / "gateway")
    try:
        assert httpx.get(gw.base_url + "/healthz", timeout=5).status_code == 200
        answer = httpx.post(gw.api + "/chat/completions", headers={"authorization": f"Bearer {DEV_KEY}"},
                            json={"model": "auto", "messages": [{"role": "user", "content": "Hello!"}]}, timeout=30)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["choices"][0]["message"]["content"] and body["model"] in ("demo-small", "demo-large")
    finally:
        gw.stop()
    assert gw.process.returncode is not None
