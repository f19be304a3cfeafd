"""The recorder: the request path hands it finished calls; a background task writes them in batches.

- `record(item)` appends to a bounded in-memory buffer: no I/O, no await, never raises.
- A writer task takes up to `batch_max` items at a time (at least every `flush_interval_s`), builds
  and costs their records, and writes each batch as one multi-row INSERT plus its rollups in one
  transaction, idempotent by request id.
- When the database is unreachable (or not migrated), batches go to the spool (spool.py) instead; the
  database is tried again every `retry_interval_s`, and once it answers the spool is replayed.
  Spooled files of earlier processes are replayed at start.
- When the buffer is full, the oldest `batch_max` items and the new one go to the spool: nothing is
  dropped.
- `close()` flushes everything to the database or, failing that, to the spool.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting import db, store
from gateway.accounting.prices import PriceCatalogue
from gateway.accounting.records import UsageRecord, build_record, needs_estimate
from gateway.accounting.spool import Spool
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
        write_timeout_s: float = 30.0,
        on_record: Callable[[Outcome, UsageRecord], None] | None = None,
    ) -> None:
        """`on_record` is told of each record built from a finished call, once: usage metrics and the access
        line (gateway/telemetry). Off the request path, maybe on a worker thread."""
        self.engine = engine
        self.url = url
        self.catalogue = catalogue
        self.spool = Spool(spool_dir)
        self.queue_max = max(queue_max, 1)
        self.batch_max = max(batch_max, 1)
        self.flush_interval_s = flush_interval_s
        self.retry_interval_s = retry_interval_s
        self.write_timeout_s = write_timeout_s
        self.stats = RecorderStats()
        self._buf: collections.deque[Item] = collections.deque()
        self._wake: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._ready = False  # schema checked and prices synced since the database last failed
        self._turns = Turns()  # the current batch's share of the event loop
        self._down_since: float | None = None
        self._next_try = 0.0
        self._last_overflow_log = 0.0
        self.on_record = on_record

    @property
    def queued(self) -> int:
        """Records in memory, not yet written or spooled."""
        return len(self._buf)

    # --- the request path ---------------------------------------------------------------------

    def record(self, item: Outcome | UsageRecord) -> None:
        """Queue a finished call. Microseconds; never blocks on I/O unless the buffer is full; never raises."""
        try:
            self.stats.enqueued += 1
            if self._closed:
                self._spill([item])
                return
            buf = self._buf
            if len(buf) >= self.queue_max:
                self._overflow(item)
                return
            buf.append(item)
            if len(buf) >= self.batch_max and (wake := self._wake) is not None and not wake.done():
                wake.set_result(None)
        except Exception:
            log.exception("accounting: could not queue a usage record")

    def _overflow(self, item: Item) -> None:
        items = [self._buf.popleft() for _ in range(min(self.batch_max, len(self._buf)))]
        items.append(item)
        self.stats.overflowed += len(items)
        now = time.monotonic()
        if now - self._last_overflow_log > 10:
            self._last_overflow_log = now
            log.warning("accounting: the record buffer is full (%d); spooling to %s", self.queue_max,
                        self.spool.directory)
        self._spill(items)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="accounting-recorder")

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
        self._closed = True
        if self._buf:
            items = list(self._buf)
            self._buf.clear()
            self._spill(items)
        self.spool.close()

    async def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until everything queued so far has been written or spooled (tests, benchmarks)."""
        deadline = time.monotonic() + timeout_s
        while self._buf or self._busy:
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
        await self._maybe_replay()  # what earlier processes left in the spool
        while True:
            if len(self._buf) < self.batch_max and not self._closing:
                self._wake = loop.create_future()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake, self.flush_interval_s)
                self._wake = None
            if self._buf:
                self._busy = True
                items = [self._buf.popleft() for _ in range(min(self.batch_max, len(self._buf)))]
                # Behind (more than a batch still queued): longer turns, so that the recorder's share of
                # a saturated event loop grows with its backlog instead of the buffer filling up.
                self._turns = Turns(TURN_S * min(MAX_STRETCH, 1 + len(self._buf) // self.batch_max))
                try:
                    await self._store(await self._build(items))
                except asyncio.CancelledError:  # close() gave up waiting: these go to the spool
                    self._spill(items)
                    raise
                except Exception:
                    log.exception("accounting: the recorder failed on a batch; spooling it")
                    self._spill(items)
                finally:
                    self._busy = False
            if self.spool.lines_written or not self._buf:
                await self._maybe_replay()
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

    def _spill(self, items: Sequence[Item]) -> None:
        records = self._build_sync(items)
        try:
            self.spool.append(records)
            self.stats.spooled += len(records)
        except OSError:
            log.exception("accounting: cannot write %d record(s) to the spool %s", len(records),
                          self.spool.directory)

    def _db_worth_trying(self) -> bool:
        return self.engine is not None and (self._down_since is None or time.monotonic() >= self._next_try)

    def _mark_down(self, error: BaseException) -> None:
        self._ready = False
        self.stats.db_failures += 1
        self._next_try = time.monotonic() + self.retry_interval_s
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("accounting: database %s unavailable (%s); spooling records to %s",
                        db.safe_url(self.url) if self.url else "", _describe(error), self.spool.directory)

    def _mark_up(self) -> None:
        if self._down_since is not None:
            log.info("accounting: database back after %.1fs", time.monotonic() - self._down_since)
            self._down_since = None

    async def _ensure_ready(self) -> None:
        assert self.engine is not None
        if not self._ready:
            await db.check_migrated(self.engine, self.url)
            await store.sync_prices(self.engine, self.catalogue)
            self._ready = True

    async def _write(self, records: list[UsageRecord]) -> int:
        assert self.engine is not None
        async with asyncio.timeout(self.write_timeout_s):
            await self._ensure_ready()
            n = await store.write_records(self.engine, records, self._turns)
        self.stats.batches += 1
        return n

    async def _store(self, records: list[UsageRecord]) -> None:
        if not records:
            return
        if not self._db_worth_trying():
            self._spill(records)
            return
        try:
            try:
                self.stats.written += await self._write(records)
            except Exception as exc:
                if _transient(exc):
                    raise
                self.stats.written += await self._isolate(records, exc)
            self._mark_up()
        except Exception as exc:
            self._mark_down(exc)
            self._spill(records)  # all of them: those already written are skipped on replay

    async def _isolate(self, records: list[UsageRecord], error: BaseException) -> int:
        """A batch the database refused: write its records one by one; refused ones go to the dead letter.

        Raises when the database becomes unreachable meanwhile.
        """
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
        if not self._db_worth_trying() or not self.spool.has_files():
            return
        replayed = 0
        try:
            for claim in self.spool.claim_all():
                try:
                    for batch in claim.batches(self.batch_max):
                        try:
                            replayed += await self._write(batch)
                        except Exception as exc:
                            if _transient(exc):
                                raise
                            replayed += await self._isolate(batch, exc)
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
