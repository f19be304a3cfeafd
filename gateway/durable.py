"""Files that survive a crash: written whole, synced, then put in place by a rename or a link, so a reader
sees the old content or the new, never a part."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new name in `directory` durable, where the platform allows."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _synced_temp(target: Path, data: bytes, mode: int) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp


def write_atomically(target: Path, data: bytes, mode: int | None = None) -> None:
    """Replace `target` with `data`. `mode`: the file's permissions (default: those of the file it
    replaces, else 0644)."""
    if mode is None:
        mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
    tmp = _synced_temp(target, data, mode)
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)


def create_once(target: Path, data: bytes, mode: int = 0o600) -> bytes:
    """`target`'s content, writing `data` there first if it does not exist. A link never overwrites:
    when two processes race, the first one's content stands for both."""
    tmp = _synced_temp(target, data, mode)
    try:
        with contextlib.suppress(FileExistsError):
            os.link(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    fsync_dir(target.parent)
    return target.read_bytes()
