"""The recorder: the request path hands it finished calls; a background task writes them in batches.

- `record(item)` writes the call's line to the write-ahead journal (journal.py: one `write()`, so that a
  process killed with -9 loses nothing) and appends the call to a bounded in-memory buffer: no await,
  no fsync, never raises. `opened(outcome)` journals a call as it is sent to a worker, so that a call
  cut off by the gateway's end is recorded too (`incomplete`).
- A writer task takes up to `batch_max` items at a time (at least every `flush_interval_s`), builds
  and costs their records, and writes each batch as one multi-row INSERT plus its rollups in one
  transaction, idempotent by request id. Each write is bounded by `write_timeout_s`: a database that
  hangs is treated as one that refuses.
- When the database is unreachable, hangs or is not migrated, batches go to the spool (spool.py, fsynced
  on a thread) instead; the database is tried again every `retry_interval_s`, and once it answers the
  spool is replayed. Spill files and journals of dead processes are replayed at start.
- When the buffer is full, its oldest `batch_max` items go to the spool on a thread: nothing is
  dropped, and the request path never waits.
- Once a call's record is in the database or the spool, its journal lines are let go (`settle`).
- `close()` flushes everything to the database or, failing that, to the spool.
- `database_ok` and `last_error` say how the database fared last (read by /readyz and the metrics).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting import db, store
from gateway.accounting.journal import SEGMENT_BYTES, Finished, Journal, Opened, decode_line, outcome_of
from gateway.accounting.prices import PriceCatalogue
from gateway.accounting.records import UsageRecord, build_record, needs_estimate
from gateway.accounting.spool import Claim, Spool
from gateway.loop_turns import TURN_S, Turns
from gateway.outcome import Outcome

log = logging.getLogger("gateway.accounting")
Item = Outcome | UsageRecord  # a finished call, or a record built already (the shadow's calls)
MAX_STRETCH = 8  # a recorder that is behind takes turns up to this many times TURN_S long


@dataclass
class RecorderStats:
    enqueued: int = 0
    written: int = 0  # rows newly inserted (duplicates skipped are not counted)
    spooled: int = 0
    replayed: int = 0  # rows newly inserted from the spool
    overflowed: int = 0  # items moved to the spool because the buffer was full
    dead_lettered: int = 0
    batches: int = 0
    db_failures: int = 0
    incomplete: int = 0  # records of calls a dead process had at a worker (written from its journal)


class Recorder:
    def __init__(
        self,
        engine: AsyncEngine | None,
        catalogue: PriceCatalogue,
        spool_dir: str | Path,
        *,
        url: str = "",
        queue_max: int = 10_000,  # as settings.recorder_queue_max
        batch_max: int = 1000,
        flush_interval_s: float = 0.25,
        retry_interval_s: float = 2.0,
        write_timeout_s: float = 5.0,  # as settings.recorder_write_timeout_s
        on_record: Callable[[Outcome, UsageRecord], None] | None = None,
        journal_segment_bytes: int = SEGMENT_BYTES,
    ) -> None:
        """`on_record` is told of each record built from a finished call, once: usage metrics and the access
        line (gateway/telemetry). Off the request path, maybe on a worker thread."""
        self.engine = engine
        self.url = url
        self.catalogue = catalogue
        self.spool = Spool(spool_dir)
        self.journal = Journal(self.spool, journal_segment_bytes)
        self.queue_max = max(queue_max, 1)
        self.batch_max = max(batch_max, 1)
        self.flush_interval_s = flush_interval_s
        self.retry_interval_s = retry_interval_s
        self.write_timeout_s = write_timeout_s
        self.stats = RecorderStats()
        self._buf: collections.deque[Item] = collections.deque()
        self._wake: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._upkeep: asyncio.Task[None] | None = None
        self._upkeep_stop = asyncio.Event()
        self._closing = False
        self._closed = False
        self._ready = False  # schema checked and prices synced since the database last failed
        self._turns = Turns()  # the current batch's share of the event loop
        self._down_since: float | None = None
        self._next_try = 0.0
        self._next_scan = 0.0  # other processes' files are looked for at most every retry_interval_s
        self._last_overflow_log = 0.0
        self._spilling: set[asyncio.Future[int | None]] = set()  # overflows being spilled on threads
        self.last_error: str | None = None  # the database's last failure (cleared when it answers again)
        self.on_record = on_record

    @property
    def queued(self) -> int:
        """Records in memory, not yet written or spooled."""
        return len(self._buf)

    # --- the request path ---------------------------------------------------------------------

    def opened(self, outcome: Outcome, prompt_estimate: int | None) -> None:
        """A call is sent to a worker: journaled, so that it is recorded even if this process dies before
        it ends. One `write()`; never raises."""
        try:
            self.journal.opened(outcome, prompt_estimate)
        except Exception:
            log.exception("accounting: could not journal call %s", outcome.request_id)

    def record(self, item: Outcome | UsageRecord) -> None:
        """Queue a finished call: journaled (one `write()`), then buffered. Microseconds; no await, no fsync
        (a full buffer is spilled on a thread); never raises."""
        try:
            self.stats.enqueued += 1
            self.journal.add(item)
            if self._closed:  # shutting down: straight to the spool
                if self._spill_sync([item]) is not None:
                    self.journal.settle(self.journal.take(1))
                return
            buf = self._buf
            if len(buf) >= self.queue_max:
                self._overflow()
            buf.append(item)
            if len(buf) >= self.batch_max and (wake := self._wake) is not None and not wake.done():
                wake.set_result(None)
        except Exception:
            log.exception("accounting: could not queue a usage record")

    def _take(self, n: int) -> tuple[list[Item], list[list[int]]]:
        """The `n` oldest items of the buffer, and their journal segments."""
        buf = self._buf
        n = min(n, len(buf))
        return [buf.popleft() for _ in range(n)], self.journal.take(n)

    def _overflow(self) -> None:
        """The buffer is full: its oldest batch goes to the spool on a thread (the request path never waits
        on the disk)."""
        items, segments = self._take(self.batch_max)
        self.stats.overflowed += len(items)
        now = time.monotonic()
        if now - self._last_overflow_log > 10:
            self._last_overflow_log = now
            log.warning("accounting: the record buffer is full (%d); spooling to %s", self.queue_max,
                        self.spool.directory)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on the event loop (a script): spill here
            if self._spill_sync(items) is not None:
                self.journal.settle(segments)
            return
        future = loop.run_in_executor(None, self._spill_sync, items)
        self._spilling.add(future)

        def spilled(f: asyncio.Future[int | None]) -> None:
            self._spilling.discard(f)
            if not f.cancelled() and f.exception() is None and f.result() is not None:
                self.journal.settle(segments)

        future.add_done_callback(spilled)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.journal.open()
        self._task = asyncio.create_task(self._run(), name="accounting-recorder")
        self._upkeep = asyncio.create_task(self._keep_journal(), name="accounting-journal")

    async def _keep_journal(self) -> None:
        """The journal's fsync, new segments and settled ones dropped, every flush interval: a task of its own,
        so that a writer waiting on a hung database does not hold them up."""
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._upkeep_stop.wait(), self.flush_interval_s)
            try:
                await self.journal.maintain(self.flush_interval_s)
            except OSError:
                log.exception("accounting: journal maintenance failed")

    async def close(self, timeout_s: float = 30.0) -> None:
        """Write what is queued (to the database, else the spool); later records go to the spool."""
        self._closing = True
        self._poke()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                log.error("accounting: flushing took over %.0fs; spooling the rest", timeout_s)
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            except Exception:
                log.exception("accounting: the recorder failed")
        if self._spilling:
            await asyncio.gather(*self._spilling, return_exceptions=True)
        self._closed = True
        if self._buf:
            items, segments = self._take(len(self._buf))
            if self._spill_sync(items) is not None:
                self.journal.settle(segments)
        self.spool.close()
        if self._upkeep is not None:
            self._upkeep_stop.set()
            await self._upkeep  # its last round (not cancelled: a segment it is creating is not left behind)
        self.journal.close()

    async def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until everything queued so far has been written or spooled (tests, benchmarks)."""
        deadline = time.monotonic() + timeout_s
        while self._buf or self._busy or self._spilling:
            if time.monotonic() > deadline:
                raise TimeoutError("the recorder did not flush in time")
            self._poke()
            await asyncio.sleep(0.005)

    def _poke(self) -> None:
        if (wake := self._wake) is not None and not wake.done():
            wake.set_result(None)

    @property
    def database_ok(self) -> bool:
        return self._down_since is None and self._ready

    # --- the writer ---------------------------------------------------------------------------

    _busy = False

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        await self._probe()
        await self._maybe_replay()  # what earlier processes left in the spool and their journals
        while True:
            if len(self._buf) < self.batch_max and not self._closing:
                self._wake = loop.create_future()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake, self.flush_interval_s)
                self._wake = None
            if self._buf:
                self._busy = True
                items, segments = self._take(self.batch_max)
                # Behind (more than a batch still queued): longer turns, so that the recorder's share of
                # a saturated event loop grows with its backlog instead of the buffer filling up.
                self._turns = Turns(TURN_S * min(MAX_STRETCH, 1 + len(self._buf) // self.batch_max))
                kept = False
                try:
                    kept = await self._store(await self._build(items))
                except asyncio.CancelledError:  # close() gave up waiting: these go to the spool
                    if self._spill_sync(items) is not None:
                        self.journal.settle(segments)
                    raise
                except Exception:
                    log.exception("accounting: the recorder failed on a batch; spooling it")
                    kept = await self._spill(items)
                finally:
                    self._busy = False
                if kept:
                    self.journal.settle(segments)
            if self.spool.lines_written or (not self._buf and time.monotonic() >= self._next_scan):
                await self._maybe_replay()
            elif not self._buf and not self.database_ok:
                await self._probe()
            if self._closing and not self._buf:
                return

    async def _build(self, items: list[Item]) -> list[UsageRecord]:
        heavy = any(not isinstance(i, UsageRecord) and needs_estimate(i) for i in items)
        if heavy:  # tokenizing prompts of cancelled streams: keep it off the event loop
            return await asyncio.to_thread(self._build_sync, items)
        # Letting requests run in between (gateway/loop_turns.py): a whole batch (a quarter second of
        # traffic, each record with its access line and metrics) would hold the loop for milliseconds.
        records: list[UsageRecord] = []
        turns = self._turns
        for item in items:
            await turns.pause()
            record = self._build_one(item)
            if record is not None:
                records.append(record)
        return records

    def _build_sync(self, items: Sequence[Item]) -> list[UsageRecord]:
        return [r for r in map(self._build_one, items) if r is not None]

    def _build_one(self, item: Item) -> UsageRecord | None:
        if isinstance(item, UsageRecord):
            return item
        try:
            record = build_record(item, self.catalogue)
        except Exception:
            log.exception("accounting: could not build a usage record for %s", item.request_id)
            return None
        hook = self.on_record
        if hook is not None and not item.reported:  # once per call, even if rebuilt
            item.reported = True
            try:
                hook(item, record)
            except Exception:
                log.exception("accounting: telemetry failed on record %s", record.request_id)
        return record

    def _spill_sync(self, items: Sequence[Item]) -> int | None:
        """Builds and appends to the spool (fsynced); how many records, or None when the disk refused (their
        journal lines are then kept: the next start replays them)."""
        records = self._build_sync(items)
        try:
            self.spool.append(records)
        except OSError:
            log.exception("accounting: cannot write %d record(s) to the spool %s", len(records),
                          self.spool.directory)
            return None
        self.stats.spooled += len(records)
        return len(records)

    async def _spill(self, items: Sequence[Item]) -> bool:
        """`_spill_sync` on a thread: an fsync takes milliseconds, too long for the event loop."""
        return await asyncio.to_thread(self._spill_sync, items) is not None

    def _db_worth_trying(self) -> bool:
        return self.engine is not None and (self._down_since is None or time.monotonic() >= self._next_try)

    def _mark_down(self, error: BaseException) -> None:
        self._ready = False
        self.stats.db_failures += 1
        self._next_try = time.monotonic() + self.retry_interval_s
        self.last_error = _describe(error)
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("accounting: database %s unavailable (%s); spooling records to %s",
                        db.safe_url(self.url) if self.url else "", _describe(error), self.spool.directory)

    def _mark_up(self) -> None:
        self.last_error = None
        if self._down_since is not None:
            log.info("accounting: database back after %.1fs", time.monotonic() - self._down_since)
            self._down_since = None

    async def _ensure_ready(self) -> None:
        assert self.engine is not None
        if not self._ready:
            await db.check_migrated(self.engine, self.url)
            await store.sync_prices(self.engine, self.catalogue)
            self._ready = True

    async def _probe(self) -> None:
        """Whether the database answers (at start, and while it is down with nothing to write)."""
        if not self._db_worth_trying():
            return
        try:
            async with asyncio.timeout(self.write_timeout_s):
                await self._ensure_ready()
        except Exception as exc:
            self._mark_down(exc)
        else:
            self._mark_up()

    async def _write(self, records: list[UsageRecord]) -> int:
        assert self.engine is not None
        async with asyncio.timeout(self.write_timeout_s):
            await self._ensure_ready()
            n = await store.write_records(self.engine, records, self._turns)
        self.stats.batches += 1
        return n

    async def _store(self, records: list[UsageRecord]) -> bool:
        """To the database, else the spool; whether they are kept (the disk may refuse too)."""
        if not records:
            return True
        if not self._db_worth_trying():
            return await self._spill(records)
        try:
            try:
                self.stats.written += await self._write(records)
            except Exception as exc:
                if _transient(exc):
                    raise
                self.stats.written += await self._isolate(records, exc)
            self._mark_up()
            return True
        except Exception as exc:
            self._mark_down(exc)
            return await self._spill(records)  # all of them: those already written are skipped on replay

    async def _isolate(self, records: list[UsageRecord], error: BaseException) -> int:
        """A batch the database refused: write its records one by one; refused ones go to the dead letter.

        Raises when the database becomes unreachable meanwhile, or is not at this code's revision.
        """
        # A database migrated past this code (a rolling upgrade: the new version's migration ran, this
        # process is of the old one) refuses what this code writes: that is not the records' fault. Check
        # the revision again: off it, DatabaseError (not ready) keeps them in the spool, for a process of the
        # new version to replay, instead of the dead letter.
        self._ready = False
        await self._ensure_ready()
        log.error("accounting: the database refused a batch (%s); writing its records one by one",
                  _describe(error))
        written = 0
        for record in records:
            try:
                written += await self._write([record])
            except Exception as exc:
                if _transient(exc):
                    raise
                log.error("accounting: record %s refused (%s); kept in %s", record.request_id,
                          _describe(exc), self.spool.directory)
                self.spool.dead_letter([record])
                self.stats.dead_lettered += 1
        return written

    async def _maybe_replay(self) -> None:
        self._next_scan = time.monotonic() + self.retry_interval_s
        if not self._db_worth_trying() or not self.spool.has_files():
            return
        replayed = 0
        try:
            for claim in self.spool.claim_all():
                try:
                    for batch, incomplete in self._replayed(claim):
                        try:
                            n = await self._write(batch)
                        except Exception as exc:
                            if _transient(exc):
                                raise
                            n = await self._isolate(batch, exc)
                        replayed += n
                        if incomplete:
                            self.stats.incomplete += n
                    if claim.bad_lines:
                        log.warning("accounting: %s had %d unreadable line(s)", claim.path, claim.bad_lines)
                    claim.done()
                finally:
                    claim.release()
            self.spool.lines_written = 0
            self._mark_up()
        except Exception as exc:
            self._mark_down(exc)
            if not _transient(exc):
                log.exception("accounting: replaying the spool failed; will retry")
        finally:
            if replayed:
                self.stats.replayed += replayed
                log.info("accounting: replayed %d record(s) from the spool", replayed)

    def _replayed(self, claim: Claim) -> Iterator[tuple[list[UsageRecord], bool]]:
        """The records of claimed files in batches (and whether they are incomplete ones): spilled records as
        they are; from a dead process's journal, each finished call's record, then an incomplete record for
        each call it opened that has none (written last: one that finished, or was spilled, keeps its full
        record)."""
        opened: dict[str, Opened] = {}
        if claim.journal:
            for entry in self._entries(claim):
                if type(entry) is Opened:
                    opened[entry.record_id or entry.request_id] = entry
            claim.bad_lines = 0  # counted on the second reading
        batch: list[UsageRecord] = []
        for entry in self._entries(claim):
            if type(entry) is Opened:
                continue
            record = entry if isinstance(entry, UsageRecord) else self._rebuild(entry)
            if record is None:
                continue
            opened.pop(record.request_id, None)
            batch.append(record)
            if len(batch) >= self.batch_max:
                yield batch, False
                batch = []
        if batch:
            yield batch, False
            batch = []
        for entry in opened.values():
            if (record := self._rebuild(entry)) is not None:
                batch.append(record)
            if len(batch) >= self.batch_max:
                yield batch, True
                batch = []
        if batch:
            yield batch, True

    @staticmethod
    def _entries(claim: Claim) -> Iterator[UsageRecord | Opened | Finished]:
        for line in claim.lines():
            try:
                yield decode_line(line)
            except Exception:
                claim.bad_lines += 1

    def _rebuild(self, entry: Opened | Finished) -> UsageRecord | None:
        try:
            return build_record(outcome_of(entry), self.catalogue)
        except Exception:
            log.exception("accounting: could not build the record of %s from a journal", entry.request_id)
            return None


# PostgreSQL's SQLSTATEs of a schema that is missing or behind (a table renamed or dropped, a database
# re-created, migrations not run yet): the database is not ready, it does not refuse these records.
NOT_READY_STATES = frozenset(("42P01", "42703", "3F000", "3D000"))


def _transient(error: BaseException) -> bool:
    """The database is unreachable or not ready: keep the records and try again later."""
    if isinstance(error, db.DatabaseError | TimeoutError) or db.is_unreachable(error):
        return True
    orig = getattr(error, "orig", None)  # SQLAlchemy's wrapper of the driver's error
    return getattr(orig, "sqlstate", None) in NOT_READY_STATES or getattr(error, "sqlstate", None) in NOT_READY_STATES


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}"[:300] if text else type(error).__name__
