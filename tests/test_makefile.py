"""`make help` describes every target of the Makefile, one line each."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.pure

ROOT = Path(__file__).resolve().parent.parent


def phony_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {t for line in re.findall(r"^\.PHONY:(.*)$", text, re.MULTILINE) for t in line.split()}


def test_make_help_describes_every_target() -> None:
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    described = {m[1]: m[2] for m in re.finditer(r"^make (\S+) +(\S.*)$", out, re.MULTILINE)}
    targets = phony_targets()
    assert {"help", "run", "test", "test-unit", "lint", "venv", "vllm-env", "clean"} <= targets
    assert targets - described.keys() == set(), "targets without a `## description` in the Makefile"
    assert described.keys() - targets == set(), "described, but not .PHONY"
