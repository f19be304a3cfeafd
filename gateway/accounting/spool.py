"""The local spool: files of one JSON line each, per process, in `<state_dir>/spool/`, each under an
exclusive `flock` while its process writes it.

Two kinds of file, one format and one way of claiming them:

- **spill files** (`<instance>.<n>.jsonl`): usage records the database could not take yet, flushed and
  fsynced;
- **journal segments** (`<instance>.<n>.wal`, gateway/accounting/journal.py): the write-ahead lines of
  calls opened at a worker and finished, written before the call's last byte.

`<instance>` names one process (`<pid>-<time>-<random>`). Replay claims a file by taking its lock, so it
never reads a file a live process is still writing; a process killed with -9 loses its locks, so its files
are replayed by the next process that looks (at start, or when the database comes back). A dead process's
journal segments are claimed together, and only once its spill files are replayed: a call opened in one
segment may have finished in another, or have been spilled. A claimed file is deleted only after every
record in it is in the database; replay is idempotent (ON CONFLICT DO NOTHING), so a crash half-way
through a replay loses nothing and counts nothing twice.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from gateway.accounting.records import UsageRecord, encode_record
from gateway.durable import fsync_dir

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("gateway.accounting")

SUFFIX = ".jsonl"  # spill files
JOURNAL_SUFFIX = ".wal"  # journal segments
DEAD_LETTER = "dead-letter.jsonl.bad"  # records the database refused (not replayed automatically)


def new_instance() -> str:
    """A name for this process's files, unique across processes and restarts."""
    return f"{os.getpid()}-{int(time.time())}-{uuid.uuid4().hex[:8]}"


def instance_of(name: str) -> str:
    return name.partition(".")[0]


def segment_number(name: str) -> int:
    """`<instance>.<n>.wal` -> n (0 for a name without one)"""
    number = name.split(".")[1] if name.count(".") >= 2 else ""
    return int(number) if number.isdigit() else 0


def _lock(fd: int) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def create_locked(path: Path) -> int:
    """A new file for appending, locked by this process for as long as the descriptor is open."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    _lock(fd)
    fsync_dir(path.parent)
    return fd


class Claim:
    """Spool files locked for replay (a spill file, or all of a dead process's journal segments): read
    their lines, then `done()` (delete them) or `release()`."""

    def __init__(self, files: list[tuple[Path, int]]) -> None:
        self.files = files
        self.bad_lines = 0

    @property
    def path(self) -> Path:
        return self.files[0][0]

    @property
    def journal(self) -> bool:
        return self.path.name.endswith(JOURNAL_SUFFIX)

    def lines(self) -> Iterator[bytes]:
        """Every whole line, file after file."""
        for _, fd in self.files:
            with open(fd, "rb", closefd=False) as f:
                f.seek(0)
                for line in f:
                    if not line.endswith(b"\n"):
                        # A torn last line (a crash mid-write): what was not whole was never written.
                        self.bad_lines += 1
                        continue
                    yield line

    def done(self) -> None:
        for path, _ in self.files:
            path.unlink(missing_ok=True)
        fsync_dir(self.path.parent)
        self.release()

    def release(self) -> None:
        for _, fd in self.files:
            if fd >= 0:
                os.close(fd)  # releases the lock
        self.files = [(path, -1) for path, _ in self.files]


class Spool:
    def __init__(self, directory: str | Path, instance: str | None = None) -> None:
        self.directory = Path(directory)
        self.instance = instance or new_instance()
        self._fd = -1
        self._path: Path | None = None
        self._numbers = itertools.count(1)  # this process's files (next() is atomic: spills come from threads)
        self._lock = threading.Lock()  # spills come from the writer and from threads (a full buffer)
        self.lines_written = 0
        self._counted: dict[str, tuple[int, int, int]] = {}  # file name -> (inode, bytes read, lines)

    def usage(self) -> tuple[int, int, int]:
        """(files, records, bytes) waiting in the spill files, every process's included (journals and the
        dead letter excluded). Files only grow, so each is read once: later calls count only the bytes
        added since."""
        files = records = size = 0
        seen: dict[str, tuple[int, int, int]] = {}
        try:
            entries = [e for e in os.scandir(self.directory) if e.name.endswith(SUFFIX)]
        except FileNotFoundError:
            entries = []
        for entry in entries:
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            inode, done, lines = self._counted.get(entry.name, (st.st_ino, 0, 0))
            if inode != st.st_ino or st.st_size < done:
                done, lines = 0, 0
            if st.st_size > done:
                try:
                    with open(entry.path, "rb") as f:
                        f.seek(done)
                        while chunk := f.read(1 << 20):
                            lines += chunk.count(b"\n")
                            done += len(chunk)
                except FileNotFoundError:
                    continue
            seen[entry.name] = (st.st_ino, done, lines)
            files, records, size = files + 1, records + lines, size + done
        self._counted = seen
        return files, records, size

    def new_path(self, suffix: str) -> Path:
        """The next file of this process (`suffix`: SUFFIX or JOURNAL_SUFFIX)."""
        return self.directory / f"{self.instance}.{next(self._numbers)}{suffix}"

    def append(self, records: list[UsageRecord]) -> None:
        """Append whole lines, then flush and fsync. Raises OSError when the disk refuses. Thread-safe."""
        if not records:
            return
        data = b"".join(encode_record(r) + b"\n" for r in records)
        with self._lock:
            if self._fd < 0:
                path = self.new_path(SUFFIX)
                self._fd, self._path = create_locked(path), path
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            os.fsync(self._fd)
            self.lines_written += len(records)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd, self._path = -1, None

    def _names(self) -> list[str]:
        try:
            return sorted(p.name for p in os.scandir(self.directory))
        except FileNotFoundError:
            return []

    def has_files(self) -> bool:
        """Whether anything may wait for replay: a spill file, or another process's journal."""
        return any(n.endswith(SUFFIX) or (n.endswith(JOURNAL_SUFFIX) and instance_of(n) != self.instance)
                   for n in self._names())

    def _take(self, name: str) -> tuple[Path, int] | None:
        path = self.directory / name
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None  # replayed by another process meanwhile
        if not _lock(fd) or not path.exists():  # a live process writes it, or it was replayed meanwhile
            os.close(fd)
            return None
        return path, fd

    def claim_all(self) -> Iterator[Claim]:
        """Every spill file no live process is writing (this process's own file is closed first), then the
        journals of processes that are gone (all of one process's segments at once, once none of its spill
        files is left)."""
        self.close()  # new spills go to a new file while this one is replayed
        for name in self._names():
            if name.endswith(SUFFIX) and (taken := self._take(name)) is not None:
                yield Claim([taken])
        names = self._names()
        spilled = {instance_of(n) for n in names if n.endswith(SUFFIX)}
        journals: dict[str, list[str]] = {}
        for name in names:
            if name.endswith(JOURNAL_SUFFIX) and instance_of(name) != self.instance:
                journals.setdefault(instance_of(name), []).append(name)
        for instance, segments in journals.items():
            if instance in spilled:
                continue  # its spills first: another process is replaying them, or they failed
            files: list[tuple[Path, int]] = []
            for name in sorted(segments, key=segment_number):
                if (taken := self._take(name)) is None:
                    break
                files.append(taken)
            claim = Claim(files)
            if len(files) < len(segments):
                claim.release()  # alive, or claimed by another process: all or none
                continue
            yield claim

    def dead_letter(self, records: list[UsageRecord]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / DEAD_LETTER, "ab") as f:
            f.write(b"".join(encode_record(r) + b"\n" for r in records))
            f.flush()
            os.fsync(f.fileno())

