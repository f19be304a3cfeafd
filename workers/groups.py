"""The process groups of launched replicas: which still run, and stopping them (SIGTERM to the group, then
SIGKILL after a grace). Standard library only: the orphan watchdog (workers/watchdog.py) runs it too."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path


def live_groups() -> set[int] | None:
    """The process groups that have a running process (zombies, which only wait to be reaped, do not count);
    None without procfs."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    groups = set()
    for entry in entries:
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, pgrp, ...
            if fields[0] not in ("Z", "X"):
                groups.add(int(fields[2]))
    return groups


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs."""
    groups = live_groups()
    if groups is not None:
        return pgid in groups
    try:  # no procfs: ask the kernel, zombies included
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


async def stop_groups(graces: Mapping[int, float], after_kill_s: float = 5.0) -> set[int]:
    """SIGTERM to each process group; SIGKILL to each one still running after its grace (seconds). Returns once
    every group is gone, or `after_kill_s` after the last SIGKILL with the groups still there (a process stuck
    in the kernel, e.g. in a GPU driver call, dies only when that call returns)."""
    left = {g: grace for g, grace in graces.items() if _signal(g, signal.SIGTERM)}
    started = time.monotonic()
    killed: set[int] = set()
    while left:
        running = live_groups()
        elapsed = time.monotonic() - started
        for g, grace in list(left.items()):
            if not (g in running if running is not None else _signal(g, 0)):
                del left[g]
            elif g not in killed and elapsed >= grace:
                _signal(g, signal.SIGKILL)
                killed.add(g)
        if left and elapsed > max(left.values()) + after_kill_s:
            break
        if left:
            await asyncio.sleep(0.05)
    return set(left)


def _signal(pgid: int, sig: int) -> bool:
    """Sends `sig` to the group; False when there is no such group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
        return True
    return False
