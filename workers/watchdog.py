"""The last guard of launched replicas: a small process that stops their process groups when the process
that launched them ends without stopping them (kill -9, a crash, the OOM killer).

The supervisor starts it (`python -m workers.watchdog`) in a session of its own, with a pipe on its
standard input, and writes `+ PGID GRACE` when a replica starts and `- PGID` once it has stopped it. Only
the supervising process holds the pipe's other end (replicas do not inherit it), so the kernel closes it
when that process ends, however it ends: the watchdog reads end-of-file, sends SIGTERM to every group
still registered and SIGKILL to what is left after its grace, then exits. Signals of the group go to every
process of the replica, vLLM's engine-core and worker processes included. A supervisor that stops normally
has stopped its replicas itself and closes the pipe with none left.

Standard library only (and workers/groups.py): it starts fast and stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys

from workers.groups import group_alive, stop_groups

log = logging.getLogger("gateway.workers")


class Watchdog:
    """The supervisor's end: the watchdog process and the pipe to it."""

    def __init__(self, process: asyncio.subprocess.Process, fd: int) -> None:
        self.process = process
        self._fd: int | None = fd

    @classmethod
    async def start(cls) -> Watchdog:
        read, write = os.pipe()  # not inheritable: no replica holds the pipe open
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "workers.watchdog", stdin=read, stdout=asyncio.subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C or a signal to our group does not reach it
            )
        except BaseException:
            os.close(write)
            raise
        finally:
            os.close(read)
        return cls(process, write)

    def watch(self, pgid: int, grace: float) -> None:
        self._send(f"+ {pgid} {grace}\n")

    def forget(self, pgid: int) -> None:
        self._send(f"- {pgid}\n")

    def _send(self, line: str) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, line.encode())  # a line is far below PIPE_BUF: written whole, at once
        except OSError as exc:  # the watchdog is gone: replicas keep running, unguarded if we are killed
            log.warning("the replicas' watchdog is gone (%s); they are stopped only by a clean stop", exc)
            self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def close(self) -> None:
        """End-of-file to the watchdog, which then stops any group still registered and exits."""
        self._close_fd()
        await self.process.wait()


def apply(groups: dict[int, float], line: bytes) -> None:
    """One line from the supervisor (`+ PGID GRACE` or `- PGID`) applied to the registered groups."""
    parts = line.split()
    with contextlib.suppress(IndexError, ValueError):
        if parts[0] == b"+":
            groups[int(parts[1])] = float(parts[2])
        elif parts[0] == b"-":
            groups.pop(int(parts[1]), None)


def main() -> int:
    groups: dict[int, float] = {}
    for line in sys.stdin.buffer:  # until end-of-file: the supervising process has closed it or ended
        apply(groups, line)
    groups = {g: grace for g, grace in groups.items() if group_alive(g)}
    if not groups:
        return 0
    print(f"gateway watchdog: the gateway ended without stopping its replicas; stopping process group(s) "
          f"{', '.join(map(str, groups))} (SIGTERM, then SIGKILL after {max(groups.values()):g}s)",
          file=sys.stderr, flush=True)
    left = asyncio.run(stop_groups(groups))
    if left:
        print(f"gateway watchdog: process group(s) {', '.join(map(str, left))} still running after SIGKILL",
              file=sys.stderr, flush=True)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
