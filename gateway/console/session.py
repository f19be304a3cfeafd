"""Console sessions: who signed in, kept server side, and checked again on every request.

A session holds the signed-in key's keyed hash (HMAC-SHA256 under the server secret, as the key store
keeps it; never the key) and the time it ends, `console_session_ttl_s` after sign-in. Every request looks
the hash up through the gateway's `Auth` (its cache, database and outage rules), so a key revoked or
expired ends its sessions at their next request. Sessions live in Redis with `redis_url` (every gateway
process sees them), else in this process's memory. The cookie holds a random session id only: HttpOnly,
SameSite=Strict, path `/console`, Secure with `console_secure_cookies`.
"""

from __future__ import annotations

import hmac
import secrets
import time
from typing import Any

import msgspec
from litestar import Litestar
from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.middleware import DefineMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from litestar.middleware.session import SessionMiddleware
from litestar.middleware.session.server_side import ServerSideSessionBackend, ServerSideSessionConfig
from litestar.stores.base import Store
from litestar.stores.memory import MemoryStore
from litestar.stores.redis import RedisStore
from litestar.types import Empty, Message, ScopeSession
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.auth.keys import server_secret
from gateway.auth.principal import ANONYMOUS, Principal, Role
from gateway.auth.service import Auth
from gateway.settings import Settings
from router.errors import SessionsUnavailable, Unauthenticated

SESSION_STORE = "console-sessions"  # the name of the store in the app's store registry
SESSION_COOKIE = "gw_console"
CSRF_COOKIE = "gw_console_csrf"
CSRF_HEADER = "x-csrftoken"
PATH = "/console"
REDIS_NAMESPACE = "gateway:console:session"
CONSOLE_ROLES: frozenset[Role] = frozenset({"finance", "admin"})
_FRESH_ID = "console_fresh_session_id"  # request state: the id a sign-in gives its session


class SignedIn(msgspec.Struct, frozen=True):
    """What a session keeps."""

    key_hash: str  # hex
    ends_at: float  # epoch seconds


class SignInNeeded(Exception):
    """No session, or one that ended (its time is up, its key revoked or expired): sign in again."""


def _unavailable() -> SessionsUnavailable:
    return SessionsUnavailable("The console's sessions cannot be read now (their store, Redis, does not answer); "
                               "try again shortly.", headers={"retry-after": "5"})


class _Backend(ServerSideSessionBackend):
    """Litestar's server-side sessions, with a fresh id on sign-in: an id chosen before sign-in (by whoever
    set the cookie) never becomes a signed-in session's. A store that fails is a 503, not a 500."""

    async def load_from_connection(self, connection: ASGIConnection[Any, Any, Any, Any]) -> dict[str, Any]:
        try:
            return await super().load_from_connection(connection)
        except RedisError:
            raise _unavailable() from None

    def get_session_id(self, connection: ASGIConnection[Any, Any, Any, Any]) -> str:
        fresh = (connection.scope.get("state") or {}).get(_FRESH_ID)
        return fresh if isinstance(fresh, str) else super().get_session_id(connection)

    async def store_in_message(self, scope_session: ScopeSession, message: Message,
                               connection: ASGIConnection[Any, Any, Any, Any]) -> None:
        if scope_session is not Empty and not scope_session:  # nothing to keep: no store entry for a visitor
            if not connection.cookies.get(self.config.key):
                return
            scope_session = Empty
        try:
            await super().store_in_message(scope_session, message, connection)
        except RedisError:
            raise _unavailable() from None


def _session_config(settings: Settings) -> ServerSideSessionConfig:
    return ServerSideSessionConfig(
        key=SESSION_COOKIE, max_age=settings.console_session_ttl_s, path=PATH, secure=settings.console_secure_cookies,
        httponly=True, samesite="strict", store=SESSION_STORE,
    )


def console_middleware(settings: Settings) -> list[DefineMiddleware]:
    """The console router's own middleware: sessions, then CSRF protection of every POST (the token comes in
    the form's `_csrf_token` field or the `x-csrftoken` header and must match the CSRF cookie)."""
    csrf_secret = hmac.new(server_secret(settings), b"console-csrf", "sha256").hexdigest()
    csrf = CSRFConfig(
        secret=csrf_secret, cookie_name=CSRF_COOKIE, cookie_path=PATH, header_name=CSRF_HEADER,
        cookie_secure=settings.console_secure_cookies, cookie_httponly=True, cookie_samesite="strict",
    )
    return [
        DefineMiddleware(SessionMiddleware, backend=_Backend(config=_session_config(settings))),
        DefineMiddleware(CSRFMiddleware, config=csrf),
    ]


def install_store(app: Litestar, redis: Redis | None) -> None:
    """Where sessions live (the app's lifespan calls this once Redis is known): Redis, else memory."""
    store: Store = RedisStore(redis, namespace=REDIS_NAMESPACE) if redis is not None else MemoryStore()
    app.stores.register(SESSION_STORE, store, allow_override=True)


def _store(connection: ASGIConnection[Any, Any, Any, Any]) -> Store:
    return connection.app.stores.get(SESSION_STORE)


async def start(connection: ASGIConnection[Any, Any, Any, Any], key_hash: bytes, ttl_s: int) -> None:
    """A new session for the key whose hash is `key_hash`, under a fresh id (the old one's data deleted)."""
    old = connection.cookies.get(SESSION_COOKIE)
    if old:
        await _delete(connection, old)
    connection.scope.setdefault("state", {})[_FRESH_ID] = secrets.token_hex(32)
    connection.set_session(msgspec.to_builtins(SignedIn(key_hash.hex(), time.time() + ttl_s)))


async def end(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """Forget the caller's session now (its store entry; the cookie goes with the answer)."""
    sid = connection.cookies.get(SESSION_COOKIE)
    if sid:
        await _delete(connection, sid)


async def _delete(connection: ASGIConnection[Any, Any, Any, Any], sid: str) -> None:
    try:
        await _store(connection).delete(sid)
    except RedisError:
        raise _unavailable() from None


async def signed_in(connection: ASGIConnection[Any, Any, Any, Any], auth: Auth) -> Principal:
    """The principal of the caller's session, checked now; raises SignInNeeded when there is none.
    With auth off, everyone is the anonymous admin."""
    if not auth.required:
        return ANONYMOUS
    try:
        held = msgspec.convert(connection.session, SignedIn)
    except msgspec.ValidationError:
        raise SignInNeeded from None
    try:
        if held.ends_at <= time.time():
            raise SignInNeeded
        principal = await auth.identify(bytes.fromhex(held.key_hash))
        if principal.role not in CONSOLE_ROLES:  # its role changed since sign-in
            raise SignInNeeded
    except (SignInNeeded, Unauthenticated, ValueError):
        await end(connection)
        raise SignInNeeded from None
    return principal
