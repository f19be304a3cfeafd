"""A `gateway` command whose reader leaves early (`gateway ... | head`) stops quietly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_a_reader_that_left_gets_no_traceback(tmp_path: Path) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"model": "auto", "messages": [{"role": "user", "content": "What is 2+2?"}]}))
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "route", "explain", str(request)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the command writes its first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err
