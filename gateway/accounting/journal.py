"""The write-ahead journal: a line per call, written before the call's last byte, so that a process killed
with -9 loses no record.

- When a call is sent to a worker, an **opened** line says what is known of it (who, which model and
  pool, when, the prompt's estimated tokens); when it ends, a **finished** line says what became of it
  (status, times, the worker's usage). Never prompt or completion text. A record already built (the
  shadow's calls) is journaled as the spool's own line.
- Each line is one `write()` to an `O_APPEND` descriptor: once it returns, the line survives the
  process. A machine crash is another matter: the recorder fsyncs the journal every flush interval
  (when lines were written), on a thread, never on the event loop.
- The journal's files are spool files (`<instance>.<n>.wal`, gateway/accounting/spool.py): locked
  while this process lives; a dead process's segments are replayed like its spill files, and an opened
  call without its finished line becomes an **incomplete** record.
- A segment is deleted (or, the current one, truncated) once nothing in it is needed: every call opened
  in it has finished, and every call finished in it is in the database or the spill file. The recorder
  says so (`take` the items it pops from its buffer, `settle` them once written or spilled); the current
  segment is sealed and a new one begun past `segment_bytes`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from pathlib import Path

import msgspec

from gateway.accounting.records import UsageRecord, decode_record
from gateway.accounting.spool import JOURNAL_SUFFIX, Spool, create_locked, segment_number
from gateway.durable import fsync_dir
from gateway.inference.usage import PromptTokensDetails, Usage
from gateway.outcome import CallKind, Outcome

log = logging.getLogger("gateway.accounting")

SEGMENT_BYTES = 4 << 20  # ~7,000 calls; a killed process's next start replays at most a few segments


class _Call(msgspec.Struct, array_like=True):
    """What an opened and a finished line both begin with. A field added later goes last in each (with a
    default), so that lines written before it still read."""

    request_id: str
    record_id: str | None  # the id it is recorded under, when not `request_id`
    received: float  # epoch seconds
    tenant: str
    team: str | None
    key_id: str | None
    requested_model: str | None
    model: str
    pool: str | None
    policy_rule: str | None
    reference_model: str | None
    prompt_estimate: int | None  # routing's estimate of the prompt's tokens, when it made one


class Opened(_Call, tag="o"):
    """A call sent to a worker: what is known of it then."""

    kind: CallKind = "chat"


class Finished(_Call, tag="f"):
    """A call that ended (answered, refused, failed, cancelled): what its record is built from."""

    first_token: float | None
    finished: float
    replica: str | None
    cache_hit: bool
    status: int
    completed: bool
    failure: str | None
    cancelled: bool
    error: str | None
    prompt_tokens: int | None  # the worker's usage; None when none arrived
    cached_tokens: int
    completion_tokens: int
    content_events: int
    kind: CallKind = "chat"


Entry = UsageRecord | Opened | Finished
_decode_entry = msgspec.json.Decoder(Opened | Finished).decode


def decode_line(line: bytes) -> Entry:
    """A spool line: a record (an object: spill files, records journaled whole) or a journal entry (an array)."""
    return _decode_entry(line) if line.startswith(b"[") else decode_record(line)


def outcome_of(entry: Opened | Finished) -> Outcome:
    """The outcome an entry describes, for `build_record` (times on the wall clock: `started` is `received`).
    An opened entry alone is a call cut off by the gateway's end: `incomplete`."""
    o = Outcome(request_id=entry.request_id, model=entry.model, started=entry.received, received=entry.received,
                record_id=entry.record_id, requested_model=entry.requested_model, pool=entry.pool,
                tenant=entry.tenant, team=entry.team, key_id=entry.key_id, policy_rule=entry.policy_rule,
                reference_model=entry.reference_model, prompt_estimate=entry.prompt_estimate, kind=entry.kind)
    if not isinstance(entry, Finished):
        o.failure, o.finished = "incomplete", entry.received  # when it ended is not known
        return o
    o.first_byte, o.finished, o.replica, o.cache_hit = entry.first_token, entry.finished, entry.replica, entry.cache_hit
    o.status, o.completed, o.failure, o.cancelled = entry.status, entry.completed, entry.failure, entry.cancelled
    o.error, o.content_events = entry.error, entry.content_events
    if entry.prompt_tokens is not None:
        o.usage = Usage(entry.prompt_tokens, entry.completion_tokens, entry.prompt_tokens + entry.completion_tokens,
                        PromptTokensDetails(entry.cached_tokens) if entry.cached_tokens else None)
    return o


class Journal:
    """This process's journal. `opened` and `add` are the request path's: one `write()` each, never raising;
    the rest is the recorder's background tasks'."""

    def __init__(self, spool: Spool, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.spool = spool
        self.segment_bytes = segment_bytes
        self._encode_into = msgspec.json.Encoder().encode_into
        self._line = bytearray()  # reused: the request path allocates no buffer per line
        self._fd = -1
        self._path: Path | None = None
        self._segment = 0  # the current segment's number (0: none open)
        self._size = 0
        self._dirty = False  # written since the last fsync
        self._synced = 0.0
        # Per segment: calls opened in it still in flight, and lines in it not yet settled.
        self._pending: dict[int, int] = {}
        self._sealed: dict[int, tuple[Path, int]] = {}  # earlier segments, kept (and locked) until settled
        # The segment of each item in the recorder's buffer, in its order, as runs of [segment, count].
        self._runs: collections.deque[list[int]] = collections.deque()
        self.failed = False  # a line could not be written: keep every segment, for the next start's replay

    @property
    def segments(self) -> int:
        """Segment files this process holds."""
        return len(self._sealed) + (self._fd >= 0)

    def open(self) -> None:
        """Begin the first segment. A journal that cannot be opened is logged; calls are still recorded."""
        try:
            self._begin()
        except OSError as exc:
            log.error("accounting: cannot open the journal in %s (%s); records in memory would be lost on a "
                      "crash", self.spool.directory, exc)

    def _begin(self) -> None:
        path = self.spool.new_path(JOURNAL_SUFFIX)
        self._switch(path, create_locked(path))

    def _switch(self, path: Path, fd: int) -> None:
        """`path` becomes the current segment (on the event loop: the request path writes to the current one)."""
        if self._fd >= 0 and self._path is not None:
            self._sealed[self._segment] = (self._path, self._fd)
        self._fd, self._path, self._segment, self._size = fd, path, segment_number(path.name), 0

    # --- the request path ---------------------------------------------------------------------------

    def _write(self, entry: Opened | Finished | UsageRecord) -> int:
        """Appends the entry's line; its segment, or 0 when there is no journal or the write failed."""
        fd = self._fd
        if fd < 0:
            return 0
        line = self._line
        try:
            self._encode_into(entry, line)
            line += b"\n"
            written = os.write(fd, line)
            while written < len(line):  # a regular file takes it whole unless the disk is full
                written += os.write(fd, memoryview(line)[written:])
        except (OSError, TypeError, ValueError) as exc:
            if not self.failed:
                log.error("accounting: cannot write to the journal %s (%s); keeping it whole", self._path, exc)
            self.failed = True
            return 0
        self._size += len(line)
        self._dirty = True
        return self._segment

    def opened(self, o: Outcome, prompt_estimate: int | None) -> None:
        """A call is sent to a worker."""
        o.prompt_estimate = prompt_estimate
        segment = self._write(Opened(o.request_id, o.record_id, o.received, o.tenant, o.team, o.key_id,
                                     (o.requested_model or "")[:200], o.model, o.pool, o.policy_rule,
                                     o.reference_model, prompt_estimate, o.kind))
        if segment:
            pending = self._pending
            pending[segment] = pending.get(segment, 0) + 1
            o.journal_segment = segment

    def add(self, item: Outcome | UsageRecord) -> None:
        """An item the recorder queues: a finished call (its opened line, if any, is then no longer needed)
        or a record built already."""
        pending = self._pending
        if isinstance(item, UsageRecord):
            segment = self._write(item)
        else:
            o = item
            usage, started, received, first, end = o.usage, o.started, o.received, o.first_byte, o.finished
            details = usage.prompt_tokens_details if usage is not None else None
            segment = self._write(Finished(
                o.request_id, o.record_id, received, o.tenant, o.team, o.key_id, (o.requested_model or "")[:200],
                o.model, o.pool, o.policy_rule, o.reference_model, o.prompt_estimate,
                None if first is None else received + (first - started),  # on the wall clock
                received if end is None else received + (end - started), o.replica, o.cache_hit, o.status,
                o.completed, o.failure, o.cancelled, o.error, usage.prompt_tokens if usage is not None else None,
                (details.cached_tokens or 0) if details is not None else 0,
                usage.completion_tokens if usage is not None else 0, o.content_events, o.kind))
            if opened := o.journal_segment:
                pending[opened] -= 1
                o.journal_segment = 0
        if segment:
            pending[segment] = pending.get(segment, 0) + 1
        runs = self._runs
        if runs and runs[-1][0] == segment:
            runs[-1][1] += 1
        else:
            runs.append([segment, 1])

    # --- the writer ---------------------------------------------------------------------------------

    def take(self, n: int) -> list[list[int]]:
        """The segments of the `n` oldest items queued (as the recorder takes them from its buffer)."""
        taken: list[list[int]] = []
        runs = self._runs
        while n > 0 and runs:
            segment, count = runs[0]
            k = min(n, count)
            taken.append([segment, k])
            if k == count:
                runs.popleft()
            else:
                runs[0][1] -= k
            n -= k
        return taken

    def settle(self, taken: list[list[int]]) -> None:
        """Those items are in the database or the spill file: their lines are no longer needed."""
        pending = self._pending
        for segment, n in taken:
            if segment:
                pending[segment] -= n

    async def maintain(self, sync_interval_s: float) -> None:
        """Fsync what was written (at most every `sync_interval_s`, on a thread), begin a new segment past
        `segment_bytes`, and drop what is settled."""
        if self._fd < 0:
            return
        now = time.monotonic()
        if self._dirty and now - self._synced >= sync_interval_s:
            self._dirty, self._synced = False, now
            await asyncio.to_thread(os.fsync, self._fd)
        if self._size >= self.segment_bytes:
            path, current = self.spool.new_path(JOURNAL_SUFFIX), self._fd
            try:
                fd = await asyncio.to_thread(create_locked, path)
            except OSError as exc:
                log.error("accounting: cannot begin a journal segment in %s (%s)", self.spool.directory, exc)
            else:
                self._switch(path, fd)
                await asyncio.to_thread(os.fsync, current)  # sealed: no line goes there any more
        self.drop_settled()

    def drop_settled(self, closing: bool = False) -> None:
        if self.failed:
            return
        pending = self._pending
        for segment, (path, fd) in list(self._sealed.items()):
            if not pending.get(segment):
                path.unlink(missing_ok=True)
                os.close(fd)
                del self._sealed[segment]
                pending.pop(segment, None)
        if self._fd >= 0 and not pending.get(self._segment):
            if closing:
                assert self._path is not None
                self._path.unlink(missing_ok=True)
                os.close(self._fd)
                self._fd, self._path = -1, None
            elif self._size:
                os.ftruncate(self._fd, 0)  # O_APPEND: the next line goes at the start
                self._size = 0

    def close(self) -> None:
        """At shutdown, once the recorder has flushed: settled segments go; the others stay, locked until
        the process exits, then replayed by the next start (calls still in flight, records not written)."""
        self.drop_settled(closing=True)
        if self._fd >= 0 or self._sealed:
            fsync_dir(self.spool.directory)
            log.warning("accounting: %d journal segment(s) in %s kept for the next start (calls in flight or "
                        "records not yet written)", self.segments, self.spool.directory)
