"""The write-ahead journal: what a line holds (never text), the record rebuilt from it, a dead process's
journal replayed once (calls it had at a worker recorded as incomplete), segments let go once settled,
and the recorder under a hung database (through the shared fault proxy)."""

from __future__ import annotations

import asyncio
import os
import time
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
from sqlalchemy import func, select, text

from gateway.accounting.db import create_engine
from gateway.accounting.journal import Finished, Journal, Opened, decode_line, outcome_of
from gateway.accounting.models import UsageRecord
from gateway.accounting.recorder import Recorder
from gateway.accounting.records import build_record
from gateway.accounting.spool import JOURNAL_SUFFIX, SUFFIX, Spool
from gateway.inference.usage import PromptTokensDetails, Usage
from gateway.outcome import Outcome
from tests.fault_proxy import FaultProxy
from tests.pg_support import catalogue, migrated_engine, record

NOW = 1_800_000_000.0
SECRET = "the prompt text nobody may read"


def call(n: int, **fields: object) -> Outcome:
    """A finished call as the relay leaves it (perf_counter times from `started`)."""
    o = Outcome(request_id=f"call-{n:04d}", model="small", started=50.0, received=NOW + n, replica="http://w:1",
                status=200, pool="p-small", requested_model="auto", first_byte=50.2, finished=50.9, tenant="acme",
                team="red", key_id="key-1", policy_rule="cheap", completed=True,
                usage=Usage(300, 40, 340, PromptTokensDetails(100)))
    o.prompt = [{"role": "user", "content": SECRET}]
    for k, v in fields.items():
        setattr(o, k, v)
    return o


def lines(directory: Path, suffix: str = JOURNAL_SUFFIX) -> list[bytes]:
    return [line for p in sorted(directory.glob(f"*{suffix}")) for line in p.read_bytes().splitlines()]


def dead_journal(directory: Path) -> Journal:
    """A journal as a process killed with -9 leaves it: its files stay, its locks go (close the fds)."""
    journal = Journal(Spool(directory))
    journal.open()
    return journal


def kill(journal: Journal) -> None:
    for fd in [journal._fd, *(fd for _, fd in journal._sealed.values())]:
        os.close(fd)


async def count_rows(engine) -> int:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(UsageRecord))).scalar_one())


async def wait_rows(engine, n: int, timeout_s: float = 15) -> int:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        rows = await count_rows(engine)
        if rows >= n or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.05)


@pytest.mark.pure
@pytest.mark.parametrize("fields", [
    {},  # answered in full, with the worker's usage and cached tokens
    {"usage": None, "completed": False, "cancelled": True, "content_events": 7, "prompt": None,
     "prompt_estimate": 260},  # a stream the client left before its usage came
    {"usage": None, "replica": None, "status": 429, "completed": False, "failure": "rejected",
     "error": "BudgetExceeded", "first_byte": None},  # refused by a limit
    {"cache_hit": True, "replica": None},  # answered from the cache
    {"record_id": "gw-own-id"},  # the client chose its x-request-id: recorded under one of ours
])
def test_a_finished_line_holds_what_the_record_is_built_from_and_never_text(tmp_path: Path,
                                                                           fields: dict[str, object]) -> None:
    o = call(1, **fields)
    journal = dead_journal(tmp_path)
    journal.add(o)
    [line] = lines(tmp_path)
    assert SECRET.encode() not in line and b"content" not in line
    entry = decode_line(line)
    assert isinstance(entry, Finished)
    o.prompt = None  # what a record built from the journal can know: routing's estimate, not the text
    assert build_record(outcome_of(entry), catalogue()) == build_record(o, catalogue())


@pytest.mark.pure
def test_an_opened_line_alone_is_an_incomplete_call_costed_on_its_prompt_estimate(tmp_path: Path) -> None:
    o = call(2, usage=None, completed=False, first_byte=None, replica=None, status=0)
    journal = dead_journal(tmp_path)
    journal.opened(o, 1000)
    [line] = lines(tmp_path)
    assert SECRET.encode() not in line
    entry = decode_line(line)
    assert type(entry) is Opened
    r = build_record(outcome_of(entry), catalogue())
    assert (r.status, r.usage_source, r.prompt_tokens, r.completion_tokens) == ("incomplete", "estimate", 1000, 0)
    assert r.finished == r.received == o.received and r.http_status is None
    assert r.cost == Decimal("0.0001000000")  # 1,000 prompt tokens at 0.10 per million, no output
    assert (r.tenant, r.team, r.key_id, r.routed_model, r.pool) == ("acme", "red", "key-1", "small", "p-small")
    without = build_record(outcome_of(Opened(**{**{f: getattr(entry, f) for f in entry.__struct_fields__},
                                                "prompt_estimate": None})), catalogue())
    assert (without.prompt_tokens, without.cost) == (0, 0)


@pytest.mark.pure
def test_lines_carry_the_calls_operation_and_lines_written_before_it_read_as_chat(tmp_path: Path) -> None:
    journal = dead_journal(tmp_path)
    journal.opened(call(3, kind="embeddings"), 12)
    journal.add(call(4, kind="completion"))
    journal.add(call(5, kind="embeddings"))
    spilled = build_record(call(6, kind="rerank"), catalogue())
    Spool(tmp_path / "spill").append([spilled])
    opened, finished, embedded = (build_record(outcome_of(decode_line(line)), catalogue())  # type: ignore[arg-type]
                                  for line in lines(tmp_path))
    assert (opened.operation, finished.operation, embedded.operation) == ("embeddings", "text_completion",
                                                                          "embeddings")
    [spill_line] = lines(tmp_path / "spill", SUFFIX)
    assert decode_line(spill_line) == spilled and spilled.operation == "rerank"
    # A journal or spill line written before records had an operation: one field fewer (the last).
    for line in lines(tmp_path):
        entry = decode_line(line)
        older = msgspec.json.encode(entry)[:-1].rsplit(b",", 1)[0] + b"]"
        assert msgspec.json.decode(older)[-1] != "embeddings"
        assert build_record(outcome_of(decode_line(older)), catalogue()).operation == "chat"  # type: ignore[arg-type]
    older_spill = msgspec.json.decode(spill_line)
    del older_spill["operation"]
    assert decode_line(msgspec.json.encode(older_spill)) == msgspec.structs.replace(spilled, operation="chat")


async def test_a_dead_process_journal_is_replayed_once_with_its_cut_calls_incomplete(any_url: str,
                                                                                    tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    dead = dead_journal(spool_dir)
    finished = [call(n) for n in range(5)]
    for o in finished[:3]:  # opened at a worker, then finished
        dead.opened(o, 280)
    for o in finished:
        dead.add(o)
    cut = [call(n, usage=None) for n in range(10, 13)]  # at a worker when the process died
    for o in cut:
        dead.opened(o, 500)
    spilled = call(20)  # opened, finished, then spilled, its finished line in a segment since deleted
    dead.opened(spilled, 280)
    spill = Spool(spool_dir, dead.spool.instance)
    spill.append([build_record(spilled, catalogue())])
    spill.close()
    dead.add(record(99))  # a record journaled whole (the shadow's)
    kill(dead)
    live = dead_journal(spool_dir)  # another gateway, alive: its journal is not touched
    live.opened(call(30), 10)

    async with migrated_engine(any_url) as engine:
        rec = Recorder(engine, catalogue(), spool_dir, url=any_url, flush_interval_s=0.05)
        await rec.start()
        assert await wait_rows(engine, 10) == 10
        await rec.close()
        async with engine.connect() as conn:
            rows = {r.request_id: r for r in await conn.execute(
                text("SELECT request_id, status, usage_source, prompt_tokens, completion_tokens FROM usage_records"))}
        assert rec.stats.incomplete == 3
        # A second start finds nothing more to replay.
        again = Recorder(engine, catalogue(), spool_dir, url=any_url, flush_interval_s=0.05)
        await again.start()
        await again.close()
        assert await count_rows(engine) == 10 and again.stats.replayed == 0
    assert {rid for rid, r in rows.items() if r.status == "ok"} == {o.request_id for o in [*finished, spilled]} | {
        "req-00000099"}
    for o in cut:
        assert tuple(rows[o.request_id])[1:] == ("incomplete", "estimate", 500, 0)
    assert tuple(rows[spilled.request_id])[1:] == ("ok", "worker", 300, 40)  # its full record, not an incomplete one
    left = sorted(p.name for p in spool_dir.iterdir())
    assert left == [live._path.name]  # type: ignore[union-attr]


async def test_journal_segments_are_let_go_once_settled(sqlite_url: str, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    async with migrated_engine(sqlite_url) as engine:
        rec = Recorder(engine, catalogue(), spool_dir, url=sqlite_url, flush_interval_s=0.02,
                       journal_segment_bytes=2_000)
        await rec.start()
        long = call(0, usage=None)
        rec.opened(long, 40)  # a long stream: its segment must stay while it runs
        first = next(spool_dir.glob(f"*{JOURNAL_SUFFIX}"))
        for n in range(1, 60):
            o = call(n)
            rec.opened(o, 40)
            rec.record(o)
            if n % 10 == 0:
                await asyncio.sleep(0.05)  # the writer commits, settles, begins new segments
        await rec.flush()
        await asyncio.sleep(0.1)
        assert await count_rows(engine) == 59
        segments = sorted(spool_dir.glob(f"*{JOURNAL_SUFFIX}"))
        assert first in segments and len(segments) == 2  # the long stream's, and the current one
        assert first.stat().st_size > 0
        rec.record(long)
        await rec.flush()
        await asyncio.sleep(0.1)
        segments = sorted(spool_dir.glob(f"*{JOURNAL_SUFFIX}"))
        assert len(segments) == 1 and segments[0].stat().st_size == 0  # settled: truncated
        await rec.close()
        assert await count_rows(engine) == 60
    assert list(spool_dir.iterdir()) == []


async def test_a_hung_database_is_a_refusing_one_and_loses_nothing(pg_url: str, tmp_path: Path) -> None:
    """PostgreSQL accepting connections but never answering: each write gives up after write_timeout_s, the
    batch goes to the spool, the buffer stays bounded and `record` never waits; back, all arrive once."""
    async with migrated_engine(pg_url) as direct:
        with FaultProxy.before(pg_url) as proxy:
            engine = create_engine(proxy.through(pg_url), connect_timeout_s=1)
            rec = Recorder(engine, catalogue(), tmp_path / "spool", url=pg_url, flush_interval_s=0.02,
                           retry_interval_s=0.2, write_timeout_s=0.3, queue_max=50, batch_max=20)
            try:
                await rec.start()
                sent, deepest = 0, 0
                for _ in range(40):
                    rec.record(record(sent))
                    sent += 1
                assert await wait_rows(direct, 40) == 40
                assert rec.database_ok and rec.last_error is None
                proxy.set_mode("hang")
                # Records keep coming: until the writer gives up (write_timeout_s, then up to 2 s for the
                # driver to close the stuck connection), and a while after.
                deadline, hung_until = time.monotonic() + 10, None
                while hung_until is None or time.monotonic() < hung_until:
                    for _ in range(10):
                        rec.record(record(sent))
                        sent += 1
                        deepest = max(deepest, rec.queued)
                    await asyncio.sleep(0.01)
                    if hung_until is None and (not rec.database_ok or time.monotonic() > deadline):
                        hung_until = time.monotonic() + 0.5
                assert not rec.database_ok and "TimeoutError" in (rec.last_error or "")
                assert deepest <= 50 and rec.stats.spooled > 0
                assert await count_rows(direct) == 40
                proxy.set_mode("pass")
                assert await wait_rows(direct, sent, timeout_s=30) == sent
                await rec.close()
            finally:
                await engine.dispose()
        async with direct.connect() as conn:
            assert (await conn.execute(text("SELECT count(DISTINCT request_id) FROM usage_records"))).scalar() == sent
        assert await count_rows(direct) == sent
        assert rec.database_ok
        assert not list((tmp_path / "spool").glob(f"*{SUFFIX}"))
