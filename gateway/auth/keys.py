"""API keys: their format, the keyed hash the database keeps, the server secret and the development key.

A key is `sk-gw-` followed by 43 URL-safe characters (32 random bytes). The database keeps
HMAC-SHA256(key_hash_secret, key) in hex and the key's first 12 characters (`prefix`, shown in lists);
the key itself is printed once, at creation, and never stored or logged.

Two values live in files under `state_dir` when the settings do not give them (written once, mode
0600, atomically, so processes starting together agree):

- `key-hash-secret`: the HMAC secret (unless `key_hash_secret` is set). Every gateway process and
  `gateway keys` must use the same secret, so several hosts sharing one database set it explicitly.
- `dev-key`: the development key of the embedded default (unless `dev_key` is set).
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from gateway.auth.principal import Role, Scope
from gateway.durable import create_once
from gateway.settings import Settings

KEY_PREFIX = "sk-gw-"
SHOWN_CHARS = 12  # `sk-gw-` and 6 characters of the key: enough to recognise it in a list
SECRET_FILE = "key-hash-secret"
DEV_KEY_FILE = "dev-key"
# Who the development key is (it is not in the database): its calls are accounted to this key id.
DEV_KEY_ID = "dev"
DEV_TENANT = "default"
DEV_TEAM = "dev"
DEV_ROLE: Role = "admin"
DEV_SCOPE: Scope = "all"  # the operator's own key, on a development gateway: every tenant


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(6)


def key_prefix(key: str) -> str:
    return key[:SHOWN_CHARS]


def shown_prefix(key: str) -> str:
    """The prefix a list shows of a key that may be short (a development key from the settings): never more
    than half of it."""
    return key[:min(SHOWN_CHARS, len(key) // 2)]


def digest(secret: bytes, key: str) -> bytes:
    """The keyed hash of a key (32 bytes); `.hex()` of it is what `api_keys.key_hash` holds."""
    return hmac.digest(secret, key.encode("utf-8", "surrogateescape"), "sha256")


def _read(path: Path) -> str | None:
    with contextlib.suppress(FileNotFoundError):
        return path.read_text().strip() or None
    return None


def _read_or_create(path: Path, make: str) -> str:
    """The file's content; when there is none, `make`, written atomically (gateway/durable.py)."""
    value = _read(path)
    if value is not None:
        return value
    return create_once(path, (make + "\n").encode()).decode().strip()


def server_secret(settings: Settings) -> bytes:
    """`key_hash_secret`, else the secret kept in `<state_dir>/key-hash-secret` (created once)."""
    if settings.key_hash_secret:
        return settings.key_hash_secret.encode()
    return _read_or_create(Path(settings.state_dir) / SECRET_FILE, secrets.token_hex(32)).encode()


@dataclass(frozen=True)
class DevKey:
    key: str
    source: str  # "setting" (dev_key / GATEWAY_DEV_KEY) or the file it is kept in


def dev_key(settings: Settings, create: bool = True) -> DevKey | None:
    """The development key, if there is one.

    `dev_key` set: that value (an empty string: none). Unset: with the embedded database only (no
    `database_url`), a key generated once and kept in `<state_dir>/dev-key`; with a configured database,
    none (production keys are made with `gateway keys create`). `create=False` (lists): the file's key if
    it was made already, else none.
    """
    if settings.auth == "off":
        return None
    if settings.dev_key is not None:
        return DevKey(settings.dev_key, "setting") if settings.dev_key else None
    if settings.database_url is not None:
        return None
    path = Path(settings.state_dir) / DEV_KEY_FILE
    key = _read_or_create(path, new_key()) if create else _read(path)
    return DevKey(key, str(path)) if key is not None else None


def known_dev_key(settings: Settings) -> str | None:
    """The development key if there is one already (never makes one): for CLI commands that call the gateway."""
    if settings.dev_key is not None:
        return settings.dev_key or None
    with contextlib.suppress(OSError):
        return (Path(settings.state_dir) / DEV_KEY_FILE).read_text().strip() or None
    return None


DEV_WHO = f"role {DEV_ROLE}, tenant {DEV_TENANT}, team {DEV_TEAM}"


def dev_key_banner(settings: Settings, terminal: bool) -> list[str]:
    """What `gateway serve` prints at start about the development key.

    The key itself only on a terminal (`make run`): output that is not a terminal usually ends up in
    logs, and keys never go there; the file it is kept in is named instead.
    """
    if settings.auth == "off":
        return ["gateway: auth is off (`auth: off`): no API key is needed or checked"]
    dk = dev_key(settings)
    if dk is None:
        return []
    if dk.source == "setting":
        return [f"gateway: development key: the one in GATEWAY_DEV_KEY / dev_key ({DEV_WHO})"]
    if terminal:
        return [f"gateway: development key ({DEV_WHO}): {dk.key}",
                f"gateway:   send it as `Authorization: Bearer <key>`; it is kept in {dk.source}: "
                f"export GATEWAY_KEY=$(cat {dk.source})"]
    return [f"gateway: development key ({DEV_WHO}) in {dk.source} (printed only on a terminal)"]
