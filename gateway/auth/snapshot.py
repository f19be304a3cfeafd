"""The last known keys on local disk (`<state_dir>/key-snapshot`), so that a gateway restarted while the
database is away still authenticates the keys it knew, and still refuses the revoked and expired ones.

- It holds, per key, only what authentication needs: the principal (tenant, team, key id, role, the
  key's and its team's limits, the expiry), or that the key is revoked or expired. Never a key, nor the
  keyed hash the database keeps.
- Entries are keyed by HMAC-SHA256(snapshot key, the key's stored hash), the snapshot key derived from
  the server secret (`key_hash_secret`, else `<state_dir>/key-hash-secret`). Only someone presenting a
  key finds its entry, and the file cannot be matched against the database's rows.
- Mode 0600, written atomically (temporary file, fsync, rename) when a reload of the keys finds them
  changed; read once, at start. `key_snapshot: false` turns it off (and removes the file).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from pathlib import Path

import msgspec

from gateway.auth.principal import Principal
from gateway.durable import write_atomically

log = logging.getLogger("gateway.auth")

FILE = "key-snapshot"
VERSION = 1
_LABEL = b"gateway key snapshot v1"


class Known(msgspec.Struct, frozen=True):
    """A key's last known state: its principal, or why it is refused ("revoked", "expired")."""

    principal: Principal | None
    problem: str | None = None


class _File(msgspec.Struct):
    version: int
    written_at: float
    keys: dict[str, Known]  # entry id (hex) -> last known state


_decoder = msgspec.json.Decoder(_File)


def snapshot_key(secret: bytes) -> bytes:
    """The key of the entries' HMAC, derived from the server secret (no second secret to keep)."""
    return hmac.digest(secret, _LABEL, "sha256")


def entry_id(snapshot_key: bytes, key_hash: bytes) -> bytes:
    """The entry of the key whose stored hash is `key_hash` (the 32 bytes of `keys.digest`)."""
    return hmac.digest(snapshot_key, key_hash, "sha256")


def path_of(state_dir: str | Path) -> Path:
    return Path(state_dir) / FILE


def read(path: Path) -> dict[bytes, Known] | None:
    """The snapshot's entries; None when there is none, or it cannot be read (logged)."""
    try:
        data = _decoder.decode(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError) as exc:
        log.warning("auth: the key snapshot %s cannot be read (%s); it is rewritten at the next reload",
                    path, type(exc).__name__)
        return None
    if data.version != VERSION:
        return None
    log.info("auth: %d last known key(s) from %s (written %s)", len(data.keys), path,
             time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data.written_at)))
    return {bytes.fromhex(k): v for k, v in data.keys.items()}


def encode_entries(known: dict[bytes, Known]) -> bytes:
    """The entries, in a stable order: equal sets encode equal (a reload that changed nothing writes nothing)."""
    return msgspec.json.encode({k.hex(): known[k] for k in sorted(known)})


def write(path: Path, entries: bytes) -> None:
    """Replace the snapshot with `entries` (from `encode_entries`): readers see the old file or the new."""
    body = b'{"version":%d,"written_at":%.3f,"keys":%s}' % (VERSION, time.time(), entries)
    write_atomically(path, body, mode=0o600)


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        log.info("auth: key_snapshot is off; removed %s", path)
