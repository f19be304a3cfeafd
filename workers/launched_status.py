"""The launched replicas' status as the supervising process of `gateway serve --workers N` sees it, for its
serving processes to show (`GET /admin/workers`, the console, `gateway_replica_restarts`): they launch nothing
themselves, so they have no supervisor of their own to ask.

The parent rewrites a JSON file in the state directory, named after its pid, after every round of health
checks (a new file renamed over the old: a reader never sees half of one), and removes it when the serve ends.
A serving process reads the file of the parent that started it when asked; a file it cannot read shows no
launched replica rather than failing the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

log = logging.getLogger("gateway.workers")

Statuses = dict[str, dict[str, Any]]  # replica URL -> ManagedReplica.status()
_decoder = msgspec.json.Decoder(Statuses)


def status_path(state_dir: Path, parent: int) -> Path:
    return state_dir / f"launched-{parent}.json"


def write_statuses(path: Path, statuses: Mapping[str, Mapping[str, Any]]) -> None:
    part = path.with_name(path.name + ".part")
    part.write_bytes(msgspec.json.encode(statuses))
    os.replace(part, path)


def read_statuses(path: Path) -> Statuses:
    try:
        return _decoder.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError):
        return {}


async def publish_statuses(path: Path, statuses: Callable[[], Mapping[str, Mapping[str, Any]]],
                           interval_s: float) -> None:
    """Write `statuses()` to `path` now and every `interval_s` until cancelled; then remove the file."""
    failing = False
    try:
        while True:
            try:
                await asyncio.to_thread(write_statuses, path, statuses())
                failing = False
            except OSError as exc:  # shown as no launched replica by the serving processes; logged once per outage
                if not failing:
                    log.warning("cannot write the launched replicas' status to %s (%s)", path, exc.strerror)
                failing = True
            await asyncio.sleep(interval_s)
    finally:
        remove_statuses(path)


def remove_statuses(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
