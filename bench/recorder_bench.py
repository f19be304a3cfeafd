"""Recorder benchmark: throughput into the local PostgreSQL, and the request path's cost per record.

    .venv/bin/python bench/recorder_bench.py [--records 100000] [--batch 1000] [--url postgresql://...]

It creates a scratch database (`gwbench_<pid>`) on the server of --url (default: $TEST_POSTGRES_URL or
postgresql://postgres@127.0.0.1:5432/test), migrates it, and drops it at the end. Measured:

- enqueue: `Recorder.record(outcome)`, what the request path pays per call (µs): without the journal,
  then with it (the finished line: one write), and `Recorder.opened(outcome)` (the opened line a call
  sent to a worker adds: one write);
- build: turning an Outcome into a costed record (µs, on the writer task, off the request path);
- throughput: records/s from the first enqueue until all are committed (records + rollups), with the
  writer building, costing and inserting (one multi-row INSERT per batch), all in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid

import asyncpg
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from gateway.accounting import db
from gateway.accounting.models import UsageDaily, UsageRecord
from gateway.accounting.prices import DEFAULT_PRICES_FILE, load_prices
from gateway.accounting.recorder import Recorder
from gateway.accounting.records import build_record
from gateway.inference.usage import Usage
from gateway.outcome import Outcome

DEFAULT_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def outcomes(n: int) -> list[Outcome]:
    now = time.time()
    out = []
    for i in range(n):
        o = Outcome(request_id=uuid.uuid4().hex, model="demo-small" if i % 3 else "demo-large",
                    started=100.0, received=now, replica="http://127.0.0.1:9000", status=200,
                    usage=Usage(100 + i % 50, 20 + i % 30, 0), completed=True, first_byte=100.05, finished=100.4)
        o.pool = "small" if i % 3 else "large"
        o.requested_model = "auto"
        o.team = ("red", "blue", "green", None)[i % 4]
        out.append(o)
    return out


def request_path(rec: Recorder, items: list[Outcome], opened: bool = False) -> float:
    """Median µs per item of `rec.record` (or `rec.opened`) over chunks of `items`."""
    samples = []
    for chunk in range(0, len(items), 20_000):
        part = items[chunk:chunk + 20_000]
        t = time.perf_counter()
        if opened:
            for o in part:
                rec.opened(o, 120)
        else:
            for o in part:
                rec.record(o)
        samples.append((time.perf_counter() - t) / len(part) * 1e6)
    return statistics.median(samples)


async def main(args: argparse.Namespace) -> None:
    admin = make_url(args.url)
    name = f"gwbench_{os.getpid()}"
    conn = await asyncpg.connect(admin.set(drivername="postgresql").render_as_string(hide_password=False))
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    url = admin.set(database=name, drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    catalogue = load_prices(DEFAULT_PRICES_FILE)
    engine = db.create_engine(url)
    try:
        await db.upgrade(engine)

        # The request path: one append to the recorder's buffer, then with the journal's lines.
        items = outcomes(200_000)
        enqueue_us = request_path(Recorder(None, catalogue, tempfile.mkdtemp(), queue_max=10**9), items)
        journaled = Recorder(None, catalogue, tempfile.mkdtemp(), queue_max=10**9)
        journaled.journal.open()
        journaled_us = request_path(journaled, items)
        opened_us = request_path(journaled, items, opened=True)

        # Off the request path: building and costing a record.
        t = time.perf_counter()
        for o in items[:50_000]:
            build_record(o, catalogue)
        build_us = (time.perf_counter() - t) / 50_000 * 1e6

        # Throughput into PostgreSQL.
        results = []
        for run in range(args.runs):
            async with engine.begin() as c:
                await c.execute(UsageRecord.__table__.delete())
                await c.execute(UsageDaily.__table__.delete())
            spool = tempfile.mkdtemp()
            rec = Recorder(engine, catalogue, spool, url=url, queue_max=10**9, batch_max=args.batch,
                           flush_interval_s=0.01)
            await rec.start()
            await rec.flush()  # connected, schema checked, prices synced
            batch = outcomes(args.records)
            t = time.perf_counter()
            for o in batch:
                rec.record(o)
            await rec.flush(timeout_s=600)
            elapsed = time.perf_counter() - t
            await rec.close()
            async with engine.connect() as c:
                rows = (await c.execute(select(func.count()).select_from(UsageRecord))).scalar_one()
                calls = (await c.execute(select(func.sum(UsageDaily.calls)))).scalar_one()
            assert rows == calls == args.records, (rows, calls)
            assert rec.stats.spooled == 0
            results.append(args.records / elapsed)
            print(f"run {run + 1}: {args.records} records in {elapsed:.2f}s = {args.records / elapsed:,.0f} records/s "
                  f"({rec.stats.batches} batches)")
        print()
        print(f"throughput into PostgreSQL : {statistics.median(results):,.0f} records/s (median of {args.runs}; "
              f"batch {args.batch}; target >= 10,000)")
        print(f"enqueue (request path)     : {enqueue_us:.2f} µs per record (median), without the journal")
        print(f"  with the journal         : {journaled_us:.2f} µs per record (median): the finished line")
        print(f"  opened (a worker's call) : {opened_us:.2f} µs per call (median): the opened line")
        print(f"build + cost (writer task) : {build_us:.2f} µs per record")
    finally:
        await engine.dispose()
        conn = await asyncpg.connect(admin.set(drivername="postgresql").render_as_string(hide_password=False))
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=DEFAULT_URL, help="PostgreSQL server (a scratch database is created)")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
