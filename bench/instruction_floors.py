"""Floors of the instruction count: what uvicorn, Litestar and aiohttp alone execute per call.

    .venv/bin/python bench/instruction_floors.py [--seconds 20] [--connections 16]

Each floor app (bench/overheadlib/floor_apps.py) runs under callgrind on core 0, wrk on core 1 POSTs
the overhead benchmark's chat body, and the count is taken as `overhead.py --instructions` takes it
(less the idle process's instructions in as much time, over the calls). Compare with the gateway's
`instructions_per_req` (bench/history.py ... -- --instructions). Results: bench/results/instruction_floors.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT)]

from overhead import FIXTURES, SCENARIOS  # noqa: E402
from overheadlib import instructions as instr  # noqa: E402
from overheadlib import mock as mocklib  # noqa: E402
from overheadlib import servers  # noqa: E402
from overheadlib import wrk as wrklib  # noqa: E402
from overheadlib.procs import cores  # noqa: E402

FLOORS = ("plain", "litestar", "proxy")


def measure(name: str, tmp: Path, core: str, load_core: str, upstream: str, seconds: float, conns: int,
            body: Path) -> dict[str, object]:
    out = tmp / f"callgrind-{name}"
    floor = servers.start_floor(tmp, core, name, upstream + "/v1/chat/completions", instr.wrapper(out), 600,
                                body.read_bytes())
    url = floor.url + "/v1/chat/completions"
    try:
        sc = SCENARIOS["json"]
        load = wrklib.Load(url, body, sc.check, sc.markers, unique=False)
        wrklib.run(load, conns, 5, load_core, tmp / "wrk.log", f"{name}-warmup")
        idle = instr.idle_rate(floor.pid, out)
        instr.zero(floor.pid)
        r = wrklib.run(load, conns, seconds, load_core, tmp / "wrk.log", name)
        per_req = instr.per_call(floor.pid, out, idle, r.seconds, r.requests) or 0
    finally:
        floor.child.stop()
    what = servers.FLOORS[name]
    print(f"  {name:<9} {per_req:>9,} instructions/call  ({r.requests} calls, {r.errors} errors; {what})", flush=True)
    return {"floor": name, "what": what, "instructions_per_req": per_req, "requests": r.requests,
            "errors": r.errors, "idle_instructions_per_s": round(idle)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--out", type=Path, default=BENCH / "results" / "instruction_floors.json")
    args = p.parse_args()
    core, load_core = cores()
    with tempfile.TemporaryDirectory(prefix="instruction-floors-") as name:
        tmp = Path(name)
        body = tmp / "body.json"
        body.write_bytes(SCENARIOS["json"].body().replace(b"@@NONCE@@", b"1"))
        mock = mocklib.start(tmp / "mock", FIXTURES, load_core, servers.JSON_MODEL, servers.SSE_MODEL)
        try:
            rows = [measure(f, tmp, core, load_core, mock.json_url, args.seconds, args.connections, body)
                    for f in FLOORS]
        finally:
            mock.child.stop()
    args.out.write_text(json.dumps({"benchmark": "instruction floors",
                                    "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                                    "connections": args.connections, "seconds": args.seconds, "floors": rows},
                                   indent=1) + "\n")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
