"""`gateway serve`: the OpenAI-compatible API."""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from gateway.commands import config as options
from gateway.settings import Settings, SettingsError

# Allocations between collections of the youngest generation (Python's default: 700). A call allocates
# thousands of objects that reference counting frees within the call; at 700, the objects of dozens of
# calls in flight are walked and promoted again and again. At 20,000 most are gone first: fewer
# instructions per call (docs/performance.md). The app's start-up freezes what it
# built (gateway/app.py), so the older generations hold little.
GC_YOUNG_THRESHOLD = 20_000
_PR_SET_PDEATHSIG = 1


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve the OpenAI-compatible API")
    options.add_config(p, "every setting of the gateway")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default $GATEWAY_PORT or 8080)")
    p.add_argument("--workers", type=int, metavar="N", help="processes serving the port (default $GATEWAY_WORKERS "
                   "or 1); more than one needs redis_url")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = options.settings(args, host=args.host, port=args.port, workers=args.workers)
    except SettingsError as exc:
        print(f"gateway: error: {exc} (check --config, $GATEWAY_CONFIG and the GATEWAY_* variables)", file=sys.stderr)
        return 2
    from gateway.telemetry.logs import configure_logging

    several = settings.workers > 1
    # text or JSON lines (docs/observability.md); with several processes each line says which one wrote it
    configure_logging(settings.log_level, settings.log_format, 0 if several else None)
    quiet_signals()
    # Bound before any replica is launched, so no replica can be given our port.
    try:
        sock = socket.create_server((settings.host, settings.port), reuse_port=False)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(f"gateway: error: cannot listen on {settings.host}:{settings.port}: {reason} (another process may "
              "have it: stop it or choose another --port)", file=sys.stderr)
        return 1
    models = ", ".join(("auto", *(p.model for p in settings.pools)))
    by = f", {settings.workers} processes" if several else ""
    print(f"gateway: serving http://{settings.host}:{settings.port}/v1 (models: {models}{by})", flush=True)
    from gateway.auth.keys import dev_key_banner

    for line in dev_key_banner(settings, sys.stdout.isatty()):
        print(line, flush=True)
    if several:
        from gateway.commands.serve_workers import listening_sockets, serve_processes

        return serve_processes(settings, listening_sockets(settings, sock))
    failure = serve(settings, sock)
    if failure is not None:
        print(failure, file=sys.stderr)
        return 1
    return 0


def quiet_signals() -> None:
    """uvicorn re-raises SIGTERM/SIGINT after its clean shutdown; handlers of ours that do nothing let a
    requested stop end with status 0."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)


def serve(settings: Settings, sock: socket.socket, notify: Callable[[], Awaitable[None]] | None = None,
          parent: int | None = None) -> str | None:
    """Serve the app on the listening `sock` until a stop signal; None, or the line saying why it did not start.
    `notify` and `parent` (a serving process of gateway serve --workers): awaited once the app has started,
    then about every 30 s; the pid of the process that launched the replicas."""
    import uvicorn

    from gateway.app import create_app
    from gateway.commands.startup import DEBUG_HINT, guard_startup, report
    from gateway.server_limits import protocol_class, server_limits

    extra: dict[str, Any] = {"log_config": None} if settings.log_format == "json" else {}  # ours, not uvicorn's
    if notify is not None:
        extra["callback_notify"] = notify
    config = uvicorn.Config(
        create_app(settings, launched_by=parent),
        loop="uvloop",
        # httptools, with header, body and idle timeouts and a cap on connections per client address
        # (docs/configuration.md#server-timeouts); the idle timeout is uvicorn's keep-alive, set there.
        http=protocol_class(server_limits(settings)),
        log_level=settings.log_level,
        **extra,
        access_log=False,
        proxy_headers=False,  # the gateway uses no client address: one middleware less on every call
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    startup = guard_startup(config)
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)  # this process's: in-process test apps keep Python's
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except SystemExit:  # uvicorn's exit on a failed start
        if startup.failure is None and not startup.refused:
            raise
    if startup.failure is not None:
        return report(startup.failure)
    if startup.refused:
        return f"gateway: error: the gateway did not start ({DEBUG_HINT})"
    return None


def child(argv: Sequence[str] | None = None) -> int:
    """A serving process of `gateway serve --workers N` (gateway/commands/serve_workers.py): its settings from
    stdin, the socket it inherited, READY or why it could not start on its status pipe."""
    import msgspec

    from gateway.commands.serve_workers import READY
    from gateway.telemetry.logs import configure_logging

    p = argparse.ArgumentParser(prog="gateway serve (serving process)")
    for name in ("--index", "--socket-fd", "--status-fd", "--parent"):
        p.add_argument(name, type=int, required=True)
    args = p.parse_args(argv)
    # Drain when the parent dies without stopping us (its replicas are stopped by their watchdog).
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != args.parent:  # it died before prctl could arm it
        return 1
    with os.fdopen(args.status_fd, "wb", buffering=0) as status:
        settings = msgspec.json.decode(sys.stdin.buffer.read(), type=Settings)
        configure_logging(settings.log_level, settings.log_format, args.index)
        quiet_signals()
        told = False

        async def notify() -> None:
            nonlocal told
            if not told:
                told = True
                status.write(READY)

        failure = serve(settings, socket.socket(fileno=args.socket_fd), notify, args.parent)
        if failure is not None:
            status.write(failure.encode() + b"\n")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(child())
