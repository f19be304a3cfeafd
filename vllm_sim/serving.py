"""Serving a simulator with uvicorn (uvloop + httptools): in a background thread of another
process (:class:`SimServer`), or as the whole process until SIGINT/SIGTERM (:func:`serve`)."""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from typing import Any

from vllm_sim.app import SimApp, create_sim_app
from vllm_sim.config import SimConfig

__all__ = ["SimServer", "serve"]


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_server(app: SimApp, *, log_level: str, access_log: bool, graceful_s: int) -> Any:
    import uvicorn

    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=graceful_s,
        proxy_headers=False,
    )
    return uvicorn.Server(config)


class SimServer:
    """Serve a simulator in a background daemon thread.

    For tests and for embedding in another process::

        with SimServer(SimConfig(model="m")) as sim:
            httpx.get(sim.url + "/health")
            sim.app.state.metrics.cancelled  # the live engine, inspectable in-process

    ``port=0`` binds a free port; ``url`` tells which.  :meth:`start` returns once uvicorn
    accepts connections.
    """

    def __init__(self, config: SimConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        self.app = create_sim_app(config)
        self.host = host
        self._sock = _bind(host, port)
        self.port: int = self._sock.getsockname()[1]
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return _url(self.host, self.port)

    def start(self, timeout: float = 10.0) -> SimServer:
        self._server = _uvicorn_server(self.app, log_level="warning", access_log=False, graceful_s=1)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name=f"vllm-sim:{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("vllm-sim: uvicorn did not start")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(config: SimConfig, host: str, port: int, *, log_level: str, access_log: bool) -> int:
    """Serve until SIGINT/SIGTERM; returns the process exit code (0, or 1 when the port cannot be bound)."""
    app = create_sim_app(config)
    try:
        sock = _bind(host, port)
    except OSError as exc:
        print(f"vllm-sim: cannot bind {host}:{port}: {exc}", file=sys.stderr)
        return 1
    server = _uvicorn_server(app, log_level=log_level, access_log=access_log, graceful_s=2)
    # uvicorn handles SIGINT/SIGTERM while it runs, then re-raises them with the handlers found at start:
    # those are the server's own, so a stop at any time, even before it runs, ends serve() with 0.
    previous = {sig: signal.signal(sig, server.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # The socket is listening already: connections made from now on queue until uvicorn serves them.
        print(f"vllm-sim: listening on {_url(host, sock.getsockname()[1])} model={config.model}", flush=True)
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    return 0
