"""The launched replicas' status file of `gateway serve --workers N` (workers/launched_status.py): what the
parent writes is what a serving process reads; a missing or damaged file reads as no replica; the parent's
publishing rewrites it and removes it when cancelled, and an unwritable directory is logged once, not fatal.
The whole path, processes included, is tests/test_serve_workers.py's."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from workers.launched_status import publish_statuses, read_statuses, status_path, write_statuses

pytestmark = pytest.mark.pure

STATUS = {"http://127.0.0.1:9001": {"state": "ready", "pid": 4242, "restarts": 1, "last_error": None,
                                    "log": "/tmp/x.log", "gpus": []}}


def test_what_is_written_is_read_and_a_bad_file_reads_as_nothing(tmp_path: Path) -> None:
    path = status_path(tmp_path, 77)
    assert path.name == "launched-77.json"
    assert read_statuses(path) == {}  # not written yet
    write_statuses(path, STATUS)
    assert read_statuses(path) == STATUS
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the temporary file was renamed over it
    path.write_text('{"http://x": ')  # cut short
    assert read_statuses(path) == {}


async def test_publishing_rewrites_the_file_and_removes_it_when_cancelled(tmp_path: Path) -> None:
    path = status_path(tmp_path, 78)
    current: dict[str, dict[str, Any]] = {"http://a": {"restarts": 0}}
    task = asyncio.create_task(publish_statuses(path, lambda: current, 0.01))
    for want in (0, 3):
        current = {"http://a": {"restarts": want}}
        for _ in range(500):  # 5 s at most
            if read_statuses(path) == current:
                break
            await asyncio.sleep(0.01)
        assert read_statuses(path) == current
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert not path.exists()


async def test_an_unwritable_directory_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "missing" / "launched-79.json"
    with caplog.at_level(logging.WARNING, "gateway.workers"):
        task = asyncio.create_task(publish_statuses(path, lambda: STATUS, 0.01))
        await asyncio.sleep(0.2)  # many rounds
        assert not task.done()  # still trying
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    lines = [r.getMessage() for r in caplog.records if "launched replicas' status" in r.getMessage()]
    assert len(lines) == 1 and str(path) in lines[0], lines
