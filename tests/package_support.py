"""The built wheel and fresh environments holding it, for the tests of the package (tests/test_package.py) and of
the container image (tests/test_container.py).

Needs the package index: the wheel's dependencies are installed from it (pip's cache and constraints.txt).
When pip cannot install them the tests fail, they are not skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"


def clean_env() -> dict[str, str]:
    """This process's environment without what would point an installed gateway back at the checkout."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("GATEWAY_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def pip(*args: str, python: str = sys.executable, cwd: Path = ROOT) -> None:
    run_or_fail([python, "-m", "pip", "--disable-pip-version-check", *args], cwd=cwd, what=f"pip {' '.join(args)}")


def run_or_fail(argv: Sequence[str], cwd: Path, what: str, timeout: float = 600) -> None:
    done = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"{what} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def build_wheel(dest: Path) -> Path:
    """The checkout's wheel, built into `dest`."""
    pip("wheel", "--no-deps", "-q", "-w", str(dest), ".")
    (wheel,) = dest.glob("llm_gateway-*.whl")
    return wheel


def install_command(venv_dir: Path | str, wheel: Path) -> list[list[str]]:
    """The commands making a fresh environment at `venv_dir` with the wheel and its pinned dependencies."""
    python = f"{venv_dir}/bin/python"
    return [[sys.executable, "-m", "venv", str(venv_dir)],
            [python, "-m", "pip", "--disable-pip-version-check", "install", "-q", "-c", str(CONSTRAINTS), str(wheel)]]


def install(wheel: Path, venv_dir: Path) -> Path:
    """A fresh environment at `venv_dir` holding the wheel; its bin/."""
    for argv in install_command(venv_dir, wheel):
        run_or_fail(argv, cwd=venv_dir.parent, what=" ".join(argv))
    return venv_dir / "bin"


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout's wheel, built once per session, outside the checkout."""
    base = tmp_path_factory.mktemp("wheel")
    assert not base.resolve().is_relative_to(ROOT)
    return build_wheel(base)
