"""The local spool: records the database could not take yet, one JSON line each, flushed and fsynced.

Each process appends to its own file (`<pid>-<time>-<random>.jsonl`) and holds an exclusive `flock` on
it while it is open. Replay claims a file by taking that lock, so it never reads a file another live
process is still writing; a process killed with -9 loses its locks, so its files are replayed by the
next process that looks (at start, or when the database comes back). A claimed file is deleted only
after every record in it is in the database; replay is idempotent (ON CONFLICT DO NOTHING), so a
crash half-way through a replay loses nothing and counts nothing twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from gateway.accounting.records import UsageRecord, decode_record, encode_record

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("gateway.accounting")

SUFFIX = ".jsonl"
DEAD_LETTER = "dead-letter.jsonl.bad"  # records the database refused (not replayed automatically)


def _lock(fd: int) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Claim:
    """A spool file locked for replay: read its records, then `done()` (delete) or `release()`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.bad_lines = 0

    def batches(self, size: int) -> Iterator[list[UsageRecord]]:
        batch: list[UsageRecord] = []
        with open(self.fd, "rb", closefd=False) as f:
            f.seek(0)
            for line in f:
                if not line.endswith(b"\n"):
                    # A torn last line (a crash mid-write): what was not whole was never spooled.
                    self.bad_lines += 1
                    continue
                try:
                    batch.append(decode_record(line))
                except Exception:
                    self.bad_lines += 1
                    continue
                if len(batch) >= size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def done(self) -> None:
        self.path.unlink(missing_ok=True)
        _fsync_dir(self.path.parent)
        self.release()

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the lock
            self.fd = -1


class Spool:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._fd = -1
        self._path: Path | None = None
        self.lines_written = 0
        self._counted: dict[str, tuple[int, int, int]] = {}  # file name -> (inode, bytes read, lines)

    def usage(self) -> tuple[int, int, int]:
        """(files, records, bytes) waiting in the spool, every process's files included (the dead letter
        excluded). Files only grow, so each is read once: later calls count only the bytes added since."""
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

    def append(self, records: list[UsageRecord]) -> None:
        """Append whole lines, then flush and fsync. Raises OSError when the disk refuses."""
        if not records:
            return
        if self._fd < 0:
            self._open()
        data = b"".join(encode_record(r) + b"\n" for r in records)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        os.fsync(self._fd)
        self.lines_written += len(records)

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{os.getpid()}-{int(time.time())}-{uuid.uuid4().hex[:8]}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        _lock(fd)
        _fsync_dir(self.directory)
        self._fd, self._path = fd, path

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd, self._path = -1, None

    def has_files(self) -> bool:
        try:
            return any(p.name.endswith(SUFFIX) for p in os.scandir(self.directory))
        except FileNotFoundError:
            return False

    def claim_all(self) -> Iterator[Claim]:
        """Every spool file no live process is writing (this process's own file is closed first)."""
        self.close()  # new spills go to a new file while this one is replayed
        try:
            names = sorted(p.name for p in os.scandir(self.directory) if p.name.endswith(SUFFIX))
        except FileNotFoundError:
            return
        for name in names:
            path = self.directory / name
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # replayed by another process meanwhile
            if not _lock(fd):
                os.close(fd)
                continue  # a live process writes it
            if not path.exists():  # replayed and deleted between our open and our lock
                os.close(fd)
                continue
            yield Claim(path, fd)

    def dead_letter(self, records: list[UsageRecord]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / DEAD_LETTER, "ab") as f:
            f.write(b"".join(encode_record(r) + b"\n" for r in records))
            f.flush()
            os.fsync(f.fileno())
