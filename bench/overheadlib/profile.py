"""py-spy on the gateway under load: a flamegraph SVG and the top functions by self time.

py-spy samples the running process from outside (no code change) and is pinned to the load core. It
pauses the gateway for each sample (without that, async stacks come out torn), so the profiled run is
an extra one whose figures are not recorded. Its raw output (collapsed stacks, aggregated by function) is
turned here into a summary and an SVG, so one recording gives both.
"""

from __future__ import annotations

import html
import re
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from overheadlib.procs import BenchError, Child, pinned

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")
ROOT = str(Path(__file__).resolve().parents[2]) + "/"


def ensure_pyspy(venv_bin: Path) -> Path:
    """py-spy in the gateway's venv, installed only when missing (not a project dependency)."""
    exe = venv_bin / "py-spy"
    if not exe.exists():
        print("  installing py-spy into .venv (pip install py-spy) ...", flush=True)
        done = subprocess.run([str(venv_bin / "pip"), "install", "-q", "py-spy"], capture_output=True, text=True,
                              timeout=600)
        if done.returncode != 0 or not exe.exists():
            raise BenchError(f"pip install py-spy failed:\n{(done.stdout + done.stderr)[-2000:]}")
    return exe


def record(exe: Path, pid: int, seconds: float, out: Path, log: Path, core: str, rate: int = 250) -> Child:
    """Starts py-spy on `pid` for `seconds`; the caller waits for it (while the load runs)."""
    argv = pinned(core, [str(exe), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
                         "--rate", str(rate), "--threads", "--function", "--full-filenames", "--format", "raw",
                         "--output", str(out)])
    return Child("py-spy", argv, log)


def thread_cpu(pid: int) -> dict[int, tuple[str, int]]:
    """{tid: (thread name, utime+stime ticks)} for each thread of `pid`."""
    out = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = ((task / "comm").read_text().strip(), int(fields[11]) + int(fields[12]))
        except (OSError, ValueError):
            continue
    return out


def short(path: str) -> str:
    """`stdlib/...` for the standard library, package-relative for packages, repo-relative for ours."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    m = re.search(r"/lib/python3\.\d+/(.*)$", path)
    if m:
        return f"stdlib/{m[1]}"
    if path.startswith(ROOT):
        return path[len(ROOT):]
    return path


def frame_name(frame: str) -> str:
    m = FRAME.match(frame)
    return f"{m['func']} ({short(m['file'])}:{m['line']})" if m else frame


THREAD = re.compile(r"^thread \((?P<tid>\d+)\)(?::\s*(?P<name>.*))?$")


@dataclass
class Profile:
    """Samples of every thread; the top-function figures are over the event loop (main) thread only."""

    main_tid: int
    samples: int = 0  # all threads
    main_samples: int = 0
    threads: Counter[str] = field(default_factory=Counter)  # "tid name" -> samples
    self_counts: Counter[str] = field(default_factory=Counter)  # main thread
    total_counts: Counter[str] = field(default_factory=Counter)  # main thread
    stacks: list[tuple[list[str], int]] = field(default_factory=list)  # all threads, thread frame first

    def top(self, n: int = 15) -> list[dict[str, object]]:
        base = max(1, self.main_samples)
        return [
            {"function": f, "self_pct": round(100 * c / base, 1),
             "total_pct": round(100 * self.total_counts[f] / base, 1), "self_samples": c}
            for f, c in self.self_counts.most_common(n)
        ]


def parse(raw: Path, main_tid: int) -> Profile:
    prof = Profile(main_tid)
    for line in raw.read_text(errors="replace").splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        parts = stack_text.split(";")
        m = THREAD.match(parts[0])
        tid, tname = (int(m["tid"]), (m["name"] or "").strip()) if m else (main_tid, "")
        frames = [frame_name(f) for f in (parts[1:] if m else parts)]
        if not frames:
            continue
        thread = f"thread {tid} {tname}".strip()
        prof.samples += count
        prof.threads[thread] += count
        prof.stacks.append(([thread, *frames], count))
        if tid == main_tid:
            prof.main_samples += count
            prof.self_counts[frames[-1]] += count
            for f in set(frames):
                prof.total_counts[f] += count
    return prof


def summary_text(prof: Profile, n: int, title: str, cpu: dict[int, tuple[str, float]] | None = None) -> str:
    lines = [title, "",
             "Threads: py-spy samples (it counts a thread that waits inside native code as busy) and the CPU",
             "each thread really used during the recording (/proc/PID/task/TID/stat):"]
    for thread, c in prof.threads.most_common():
        tid = int(thread.split()[1])
        used = f"{cpu[tid][1]:.2f} s CPU" if cpu and tid in cpu else "CPU n/a"
        lines.append(f"  {100 * c / max(1, prof.samples):5.1f}% of samples  {used:>12}  {thread}")
    if cpu:
        for tid, (name, secs) in sorted(cpu.items()):
            if not any(t.split()[1] == str(tid) for t in prof.threads):
                lines.append(f"  {'':>5}  (no samples)  {secs:8.2f} s CPU  thread {tid} {name}")
    lines += ["", f"Event loop (main) thread: {prof.main_samples} samples; self = in the function itself, "
                  "total = with its callees", "", f"{'self%':>6} {'total%':>7}  function (file:first line)"]
    lines += [f"{t['self_pct']:>6} {t['total_pct']:>7}  {t['function']}" for t in prof.top(n)]
    lines += ["", "by total time (event loop thread):", f"{'total%':>7}  function"]
    base = max(1, prof.main_samples)
    lines += [f"{100 * c / base:>7.1f}  {f}" for f, c in prof.total_counts.most_common(n)]
    ours = [(f, c) for f, c in prof.total_counts.most_common() if ours_frame(f)][:n]
    lines += ["", "our code (gateway/, router/, workers/) by total time (event loop thread):",
              f"{'total%':>7} {'self%':>6}  function"]
    lines += [f"{100 * c / base:>7.1f} {100 * prof.self_counts[f] / base:>6.1f}  {f}" for f, c in ours]
    return "\n".join(lines) + "\n"


def ours_frame(name: str) -> bool:
    m = FRAME.match(name)
    return bool(m) and m["file"].startswith(("gateway/", "router/", "workers/"))


def _color(name: str) -> str:
    m = FRAME.match(name)
    path = m["file"] if m else name
    if path.startswith(("gateway/", "router/", "workers/", "thread ")):
        base = (230, 110, 50)  # ours: orange
    elif path.startswith(("stdlib/", "<")):
        base = (80, 150, 220)  # standard library: blue
    else:
        base = (200, 180, 60)  # third party: yellow
    h = sum(name.encode()) % 40 - 20
    return "rgb({},{},{})".format(*(max(0, min(255, c + h)) for c in base))


def busy_threads(cpu: dict[int, tuple[str, float]] | None, main_tid: int) -> set[int] | None:
    """Threads that really used CPU (>= 5% of the process's): py-spy also samples threads that wait inside
    native code (the policy watcher, the resolver pool) as if they were busy."""
    if not cpu:
        return None
    total = sum(secs for _, secs in cpu.values()) or 1.0
    return {tid for tid, (_, secs) in cpu.items() if secs >= 0.05 * total} | {main_tid}


def flamegraph_svg(prof: Profile, title: str, width: int = 1400, row: int = 17,
                   threads: set[int] | None = None) -> str:
    """An icicle flamegraph (callers above callees), width proportional to samples, tooltips on hover.
    With `threads`, only those threads are drawn (see busy_threads)."""
    root: dict[str, object] = {"n": 0, "kids": {}}
    left_out = sorted({f[0] for f, _ in prof.stacks if threads is not None and int(f[0].split()[1]) not in threads})
    for frames, count in prof.stacks:
        if threads is not None and int(frames[0].split()[1]) not in threads:
            continue
        node = root
        node["n"] = int(node["n"]) + count  # type: ignore[call-overload]
        for f in frames:
            kids = node["kids"]
            assert isinstance(kids, dict)
            node = kids.setdefault(f, {"n": 0, "kids": {}})
            node["n"] = int(node["n"]) + count  # type: ignore[call-overload]
    total = max(1, int(root["n"]))  # type: ignore[call-overload]
    rects: list[str] = []
    depth_max = 0

    def walk(node: dict[str, object], name: str, x: float, depth: int) -> None:
        nonlocal depth_max
        n = int(node["n"])  # type: ignore[call-overload]
        w = width * n / total
        if w < 0.3:
            return
        depth_max = max(depth_max, depth)
        y = 40 + depth * row
        label = html.escape(name)
        tip = f"{label} — {n} samples, {100 * n / total:.1f}%"
        chars = int((w - 6) / 6.5)
        text = html.escape(name[:chars - 1] + "…" if len(name) > chars else name) if chars >= 3 else ""
        rects.append(
            f'<g><title>{tip}</title><rect x="{x:.2f}" y="{y}" width="{max(w - 0.5, 0.1):.2f}" height="{row - 1}" '
            f'fill="{_color(name) if depth else "rgb(160,160,160)"}" rx="2"/>'
            + (f'<text x="{x + 3:.2f}" y="{y + row - 5}">{text}</text>' if text else "") + "</g>"
        )
        kids = node["kids"]
        assert isinstance(kids, dict)
        cx = x
        for kname, kid in sorted(kids.items(), key=lambda kv: kv[0]):
            walk(kid, kname, cx, depth + 1)
            cx += width * int(kid["n"]) / total

    walk(root, f"all ({total} samples)", 0.0, 0)
    height = 40 + (depth_max + 1) * row + 10
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="11">\n'
        f'<rect width="100%" height="100%" fill="white"/>\n'
        f'<text x="4" y="16" font-size="14">{html.escape(title)}</text>\n'
        f'<text x="4" y="32" fill="#555">icicle: callers above callees; width = share of samples; hover for '
        f'details. orange = gateway/router/workers, blue = stdlib, yellow = third party'
        + (f'; left out (no CPU, waiting in native code): {html.escape(", ".join(left_out))}' if left_out else "")
        + '</text>\n'
        + "\n".join(rects) + "\n</svg>\n"
    )
