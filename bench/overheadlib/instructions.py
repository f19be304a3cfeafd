"""Instructions per request: the gateway under valgrind's callgrind, counted per measured point.

A shared VM's timings move by 10-30% between runs (other tenants' load shows as CPU steal); the number
of instructions the gateway executes for the same requests does not. Under callgrind the gateway runs
~50x slower, so only the count means something here, never the req/s or latency of such a run:
`overhead.py --instructions` (and `history.py ... -- --instructions`) adds `instructions_per_req` to
each gateway point: the count during the point, less what the idle gateway executes in as much time
(measured just before), over the calls. Background work the calls cause (accounting batches, Redis
writes) is counted when it happens during the point.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

from overheadlib.procs import BenchError

IDLE_S = 10.0  # seconds of idle counted before a point
_TOTALS = re.compile(r"^(?:totals|summary):\s*(\d+)", re.MULTILINE)


def wrapper(out_dir: Path) -> tuple[str, ...]:
    """The command prefix that runs a program under callgrind, its dumps written to `out_dir`."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise BenchError("--instructions needs valgrind (Debian package valgrind)")
    out_dir.mkdir(parents=True, exist_ok=True)
    # No cache simulation or call graph beyond the default: only the instruction count is read.
    return ("valgrind", "--tool=callgrind", "--quiet", f"--callgrind-out-file={out_dir}/callgrind.out.%p")


def zero(pid: int) -> None:
    """Starts a new count (from here to the next `dump`)."""
    _control(pid, "--zero")


def dump(pid: int, out_dir: Path) -> int:
    """Instructions executed since `zero` (or the previous dump)."""
    before = set(out_dir.glob(f"callgrind.out.{pid}*"))
    _control(pid, "--dump")
    new = sorted(set(out_dir.glob(f"callgrind.out.{pid}*")) - before, key=lambda p: p.stat().st_mtime)
    if not new:
        raise BenchError(f"callgrind wrote no dump for pid {pid} in {out_dir}")
    return take_total(new[-1])


def take_total(dump_file: Path) -> int:
    """The instructions a callgrind output file counts; the file is removed (a long run's is megabytes)."""
    found = _TOTALS.search(dump_file.read_text(errors="replace"))
    if found is None:
        raise BenchError(f"no totals in {dump_file}")
    dump_file.unlink()
    return int(found.group(1))


def idle_rate(pid: int, out_dir: Path, seconds: float = IDLE_S) -> float:
    """Instructions per second the idle gateway executes (timers, health checks): subtracted from a
    point's count, so that a slower point (fewer calls in the same time) is not charged more for them."""
    zero(pid)
    started = time.monotonic()
    time.sleep(seconds)
    return dump(pid, out_dir) / (time.monotonic() - started)


def per_call(pid: int, out_dir: Path, idle_per_s: float, seconds: float, calls: int) -> int | None:
    """Instructions per call of a point that ran `seconds` since `zero`, less the idle rate's share."""
    executed = dump(pid, out_dir)
    return round((executed - idle_per_s * seconds) / calls) if calls else None


def _control(pid: int, action: str) -> None:
    done = subprocess.run(["callgrind_control", action, str(pid)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise BenchError(f"callgrind_control {action} {pid} failed: {done.stdout}{done.stderr}")
