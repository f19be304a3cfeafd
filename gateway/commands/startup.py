"""A failed start of `gateway serve` as one line: `gateway: error: <what> (<hint>)`.

The app's lifespan refuses a start it must not make (an unmigrated database, a bad price file, a bad
policy). Litestar reports that to uvicorn as an exception group and uvicorn logs its traceback; the
guard keeps the exception instead, and the command prints it once it has stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("gateway.serve")

Message = MutableMapping[str, Any]
ASGI = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                Awaitable[None]]
DEBUG_HINT = "GATEWAY_LOG_LEVEL=debug logs the traceback"


@dataclass
class StartupGuard:
    """What uvicorn serves until the app has started; `failure` is what stopped the start, if anything."""

    app: ASGI
    config: Any  # uvicorn.Config, whose loaded_app this guard is
    failure: BaseException | None = None
    refused: bool = False  # the app said its start failed

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "lifespan.startup.complete":
                started = True
                # Connections made from now on call the app itself: no guard on the request path.
                self.config.loaded_app = self.app
            elif message["type"] == "lifespan.startup.failed":
                self.refused = True
                message = {"type": "lifespan.startup.failed", "message": ""}  # said once, by the command
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except BaseException as exc:
            if started:
                raise
            self.failure = exc

    def quiet(self, record: logging.LogRecord) -> bool:
        """A filter for uvicorn's logger: its own words on a failed start ("Application startup failed") go."""
        return not self.refused and self.failure is None


def guard_startup(config: Any) -> StartupGuard:
    """Put a StartupGuard before `config`'s app (a uvicorn.Config, loaded here) and uvicorn's lines about it."""
    if not config.loaded:
        config.load()
    guard = StartupGuard(config.loaded_app, config)
    config.loaded_app = guard
    logging.getLogger("uvicorn.error").addFilter(guard.quiet)
    return guard


def root_cause(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def describe(exc: BaseException) -> tuple[str, str]:
    """What went wrong and what to do about it, for one line."""
    from gateway.accounting.db import DatabaseError
    from gateway.accounting.prices import PricesError
    from router.errors import PolicyError
    from workers.launcher import NoFreePort

    exc = root_cause(exc)
    if isinstance(exc, DatabaseError):
        return exc.problem, exc.hint or "check database_url"
    if isinstance(exc, PricesError):
        return _one_line(exc), "fix the price file, or point prices_file at another"
    if isinstance(exc, NoFreePort):
        return str(exc), "widen launch_ports, or stop what holds its ports"
    if isinstance(exc, PolicyError):
        more = f" (and {len(exc.errors) - 1} more)" if len(exc.errors) > 1 else ""
        return (f"the routing policy cannot be used: {exc.errors[0] if exc.errors else exc}{more}",
                "`gateway policies check` with the same settings lists every problem")
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError):
        return f"the accounting database refused: {_one_line(exc.orig or exc)}", "check database_url"
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}", DEBUG_HINT
    return f"{type(exc).__name__}: {_one_line(exc)}", DEBUG_HINT


def report(exc: BaseException) -> str:
    """The line `gateway serve` prints for a failed start; the traceback goes to the debug log."""
    log.debug("the gateway could not start", exc_info=root_cause(exc))
    what, hint = describe(exc)
    return f"gateway: error: {what} ({hint})"


def _one_line(exc: BaseException) -> str:
    """The message on one line (a YAML error's context lines joined; its `^` marker dropped)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    return "; ".join(line for line in lines if line.strip("^")) or type(exc).__name__
