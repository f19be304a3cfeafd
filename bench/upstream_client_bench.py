"""The gateway's calls to workers: CPU per call of each candidate HTTP client.

The nginx mock of bench/overhead.py (fixed vLLM 0.32 bodies: a JSON completion, a 30-chunk SSE stream)
runs on core 1; this process runs on core 0 and makes N calls with C in flight through each client,
reading each answer to its end, and divides its own CPU time by N:

  httpx                  httpx.AsyncClient, its own transport (httpcore)
  httpx+aiohttp          httpx.AsyncClient over httpx-aiohttp's AiohttpTransport (httpx's API kept)
  httpx+aiohttp direct   the same transport called straight (httpx.Request -> handle_async_request)
  aiohttp                aiohttp.ClientSession (what workers/upstream.py uses)

httpx-aiohttp is not a project dependency: its rows appear when it is installed in the venv
(`.venv/bin/pip install httpx-aiohttp`).

    .venv/bin/python bench/upstream_client_bench.py [--calls 4000] [--concurrency 1,16,64]

Results: bench/results/upstream_client.json and a Markdown table on stdout (ratios are what count:
the machine is shared and noisy; every row of a table comes from the same run).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from overheadlib import mock as mocklib  # noqa: E402
from overheadlib.procs import cores  # noqa: E402

FIXTURES = HERE.parent / "tests" / "fixtures" / "vllm-0.32"
BODY = b'{"model":"demo-small","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}'
HEADERS = {"content-type": "application/json", "accept-encoding": "identity", "x-request-id": "0" * 32}
TIMEOUT = {"connect": 3.0, "read": 300.0, "write": 300.0, "pool": 300.0}

Call = Callable[[], Awaitable[None]]


async def _drive(call: Call, calls: int, concurrency: int) -> dict[str, float]:
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            await call()

    await asyncio.gather(*(one() for _ in range(min(200, calls))))  # warm: connections, caches
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(calls)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"cpu_us_per_call": round(cpu / calls * 1e6, 1), "calls_per_s": round(calls / wall, 1)}


async def _clients(url: str, stream: bool, limit: int) -> list[tuple[str, Call, Callable[[], Awaitable[None]]]]:
    """(name, one call, close) for each client."""
    out: list[tuple[str, Call, Callable[[], Awaitable[None]]]] = []

    async def read(response: httpx.Response) -> None:
        if stream:
            async for _ in response.aiter_raw():
                pass
        else:
            await response.aread()
        await response.aclose()

    plain = httpx.AsyncClient(limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
                              trust_env=False)

    async def via_httpx() -> None:
        await read(await plain.send(plain.build_request("POST", url, content=BODY, headers=HEADERS), stream=True))

    out.append(("httpx", via_httpx, plain.aclose))
    try:
        from httpx_aiohttp import AiohttpTransport
    except ImportError:
        print("  (httpx-aiohttp not installed: its rows are left out)", flush=True)
    else:
        def session() -> aiohttp.ClientSession:
            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit), auto_decompress=False)

        wrapped = httpx.AsyncClient(transport=AiohttpTransport(client=session), trust_env=False)

        async def via_wrapped() -> None:
            request = wrapped.build_request("POST", url, content=BODY, headers=HEADERS)
            await read(await wrapped.send(request, stream=True))

        out.append(("httpx+aiohttp", via_wrapped, wrapped.aclose))
        transport = AiohttpTransport(client=session)
        parsed = httpx.URL(url)

        async def via_transport() -> None:
            request = httpx.Request("POST", parsed, content=BODY, headers=HEADERS, extensions={"timeout": TIMEOUT})
            await read(await transport.handle_async_request(request))

        out.append(("httpx+aiohttp direct", via_transport, transport.aclose))
    native = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, limit_per_host=0),
                                   auto_decompress=False)

    async def via_aiohttp() -> None:
        response = await native.post(url, data=BODY, headers=HEADERS, allow_redirects=False)
        if stream:
            async for _ in response.content.iter_any():
                pass
        else:
            await response.read()
        response.release()

    out.append(("aiohttp", via_aiohttp, native.close))
    return out


async def measure(url: str, stream: bool, calls: int, concurrency: list[int]) -> list[dict[str, Any]]:
    rows = []
    for c in concurrency:
        for name, call, close in await _clients(url, stream, max(concurrency)):
            figures = await _drive(call, calls, c)
            await close()
            row = {"scenario": "stream" if stream else "json", "concurrency": c, "client": name, **figures}
            print(f"  {row['scenario']:6s} c={c:<3d} {name:22s} {figures['cpu_us_per_call']:8.1f} us CPU/call "
                  f"{figures['calls_per_s']:9,.0f} calls/s", flush=True)
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| scenario | in flight | client | CPU µs/call | vs aiohttp |", "|---|---|---|---|---|"]
    for r in rows:
        base = next(x for x in rows if x["scenario"] == r["scenario"] and x["concurrency"] == r["concurrency"]
                    and x["client"] == "aiohttp")["cpu_us_per_call"]
        lines.append(f"| {r['scenario']} | {r['concurrency']} | {r['client']} | {r['cpu_us_per_call']:,.1f} | "
                     f"{r['cpu_us_per_call'] / base:.1f}x |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=4000)
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--out", type=Path, default=HERE / "results" / "upstream_client.json")
    args = p.parse_args()
    concurrency = [int(c) for c in args.concurrency.split(",") if c]
    client_core, mock_core = cores()
    os.sched_setaffinity(0, {int(client_core)})
    with tempfile.TemporaryDirectory(prefix="upstream-client-") as tmp:
        mock = mocklib.start(Path(tmp), FIXTURES, mock_core, "demo-small", "demo-large")
        try:
            rows = uvloop.run(measure(mock.json_url + "/v1/chat/completions", False, args.calls, concurrency))
            rows += uvloop.run(measure(mock.sse_url + "/v1/chat/completions", True, args.calls, concurrency))
        finally:
            mock.child.stop()
    result = {
        "benchmark": "upstream HTTP clients, CPU per call",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "reproduce": ".venv/bin/python bench/upstream_client_bench.py",
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version()},
        "versions": {"httpx": httpx.__version__, "aiohttp": aiohttp.__version__},
        "pinning": {"client_core": client_core, "mock_core": mock_core},
        "calls": args.calls,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print()
    print(markdown(rows))
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
