"""What the server limits (gateway/server_limits.py) cost a kept-alive connection's requests.

    .venv/bin/python bench/server_limits_bench.py [--requests 5000] [--time] [--json FILE]

uvicorn's httptools protocol and the gateway's (its subclass) are driven in memory, without sockets, on one
kept-alive connection: each request's bytes are fed to the protocol, and a minimal ASGI app reads the
body and answers 40 bytes. Two requests: a POST with a 1 KB JSON body (the inference calls' shape) and a
GET without a body. Measured by default: the instructions executed per request, under valgrind's
callgrind, counted from the outside over the measured requests only (a shared VM's timings move by
10-30%; the count does not). `--time`: wall time per request instead, the best of alternating repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

BODY = b'{"model": "auto", "messages": [{"role": "user", "content": "' + b"x" * 960 + b'"}], "max_tokens": 16}'
REQUESTS = {
    "POST, 1 KB body": b"POST /v1/chat/completions HTTP/1.1\r\nhost: b\r\ncontent-type: application/json\r\n"
                       b"authorization: Bearer sk-0123456789\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY),
    "GET": b"GET /v1/models HTTP/1.1\r\nhost: b\r\n\r\n",
}
VARIANTS = ("plain", "guarded")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["method"] == "POST":
        more = True
        while more:
            more = (await receive()).get("more_body", False)
    content = b'{"id":"x","object":"chat.completion"}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]})
    await send({"type": "http.response.body", "body": content})


class Transport(asyncio.Transport):
    """A socket's place: what the protocol writes is dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def protocol(variant: str) -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from gateway.server_limits import ServerLimits, protocol_class

    return protocol_class(ServerLimits(10.0, 30.0, 5.0, 512)) if variant == "guarded" else HttpToolsProtocol


class Connection:
    """One kept-alive connection of a uvicorn protocol, with the app behind it."""

    def __init__(self, variant: str) -> None:
        import uvicorn
        from uvicorn.server import ServerState

        cls = protocol(variant)
        config = uvicorn.Config(app, http=cls, lifespan="off", log_level="warning", access_log=False)
        config.load()
        self.state = ServerState()
        self.conn: Any = cls(config=config, server_state=self.state, app_state={})  # type: ignore[call-arg]
        self.conn.connection_made(Transport())

    async def requests(self, raw: bytes, n: int) -> None:
        tasks = self.state.tasks
        for _ in range(n):
            self.conn.data_received(raw)
            for task in list(tasks):
                await task


async def counted(variant: str, n: int) -> None:
    """The child under callgrind: warm up, then each kind of request between the parent's zero and dump."""
    conn = Connection(variant)
    for raw in REQUESTS.values():
        await conn.requests(raw, 200)
        print("ready", flush=True)
        sys.stdin.readline()  # the parent zeroes the count
        await conn.requests(raw, n)
        print("done", flush=True)
        sys.stdin.readline()  # the parent dumps it


def instructions(n: int) -> list[dict[str, Any]]:
    totals = re.compile(r"^(?:totals|summary):\s*(\d+)", re.MULTILINE)
    per_request: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as out:
        for variant in VARIANTS:
            child = subprocess.Popen(
                ["valgrind", "--tool=callgrind", "--quiet", f"--callgrind-out-file={out}/callgrind.out.%p",
                 sys.executable, __file__, "--child", variant, "--requests", str(n)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert child.stdin is not None and child.stdout is not None
            for kind in REQUESTS:
                assert child.stdout.readline().strip() == "ready"
                subprocess.run(["callgrind_control", "--zero", str(child.pid)], check=True, capture_output=True)
                child.stdin.write("\n")
                child.stdin.flush()
                assert child.stdout.readline().strip() == "done"
                before = set(Path(out).glob("callgrind.out.*"))
                subprocess.run(["callgrind_control", "--dump", str(child.pid)], check=True, capture_output=True)
                dump = max(set(Path(out).glob("callgrind.out.*")) - before, key=lambda p: p.stat().st_mtime)
                found = totals.search(dump.read_text(errors="replace"))
                assert found is not None, dump
                per_request.setdefault(kind, {})[variant] = int(found.group(1)) / n
                dump.unlink()
                child.stdin.write("\n")
                child.stdin.flush()
            child.wait(120)
    print("| request | plain instructions/request | guarded | guarded / plain |\n|---|---|---|---|")
    for kind, got in per_request.items():
        print(f"| {kind} | {got['plain']:,.0f} | {got['guarded']:,.0f} | {got['guarded'] / got['plain']:.4f} |")
    return [{"request": kind, "unit": "instructions per request", "plain": round(got["plain"]),
             "guarded": round(got["guarded"]), "ratio": round(got["guarded"] / got["plain"], 4)}
            for kind, got in per_request.items()]


def timed(n: int, repeats: int) -> list[dict[str, Any]]:
    import uvloop

    async def run(variant: str, raw: bytes) -> float:
        conn = Connection(variant)
        await conn.requests(raw, 200)
        started = time.perf_counter()
        await conn.requests(raw, n)
        return (time.perf_counter() - started) / n * 1e6

    print("| request | plain µs/request | guarded µs/request | guarded / plain |\n|---|---|---|---|")
    results = []
    for kind, raw in REQUESTS.items():
        best = dict.fromkeys(VARIANTS, float("inf"))
        for i in range(repeats):  # alternating; the best of each: the least disturbed by other load
            for variant in VARIANTS if i % 2 == 0 else reversed(VARIANTS):
                best[variant] = min(best[variant], uvloop.run(run(variant, raw)))
        print(f"| {kind} | {best['plain']:.2f} | {best['guarded']:.2f} | {best['guarded'] / best['plain']:.3f} |")
        results.append({"request": kind, "unit": "µs per request, best of repeats", "plain": round(best["plain"], 2),
                        "guarded": round(best["guarded"], 2), "ratio": round(best["guarded"] / best["plain"], 3)})
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=5000, help="measured requests of each kind (default 5000)")
    p.add_argument("--time", action="store_true", help="wall time (best of --repeats) instead of instructions")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--json", help="write the results here (e.g. bench/results/server_limits_bench.json)")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        import uvloop

        uvloop.run(counted(args.child, args.requests))
        return
    results = timed(args.requests * 10, args.repeats) if args.time else instructions(args.requests)
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        Path(args.json).write_text(json.dumps({"date": datetime.now(UTC).date().isoformat(),
                                               "commit": commit.stdout.strip(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
