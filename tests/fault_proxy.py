"""A TCP proxy in front of a real service (PostgreSQL, Redis), whose behaviour a test switches at will.

Modes:
- `pass`: bytes flow both ways, as if the proxy were not there.
- `refuse`: the listener is closed (a new connection gets ECONNREFUSED) and every open connection is
  dropped, as when the service's host stops.
- `hang`: connections are accepted and open ones stay open, but no byte goes either way: a service that
  accepts and never answers (a stuck database, a frozen Redis).

The proxy runs its own event loop on a daemon thread, so it serves an in-process app and a `gateway serve`
subprocess alike. `with FaultProxy(port) as proxy:` starts it on a free loopback port and stops it (and
every connection) at the end; `FaultProxy.before(url)` puts one in front of the service a URL names,
and `proxy.through(url)` is that URL by way of the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine
from typing import Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

Mode = Literal["pass", "refuse", "hang"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = _free_port()
        self.mode: Mode = "pass"
        self.accepted = 0  # connections accepted since start (a test can see that a client reconnected)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()  # set while in `pass`; pumps wait on it in `hang`

    @classmethod
    def before(cls, url: str) -> FaultProxy:
        """A proxy (not started) in front of the service `url` names (postgresql://..., redis://...)."""
        parts = urlsplit(url)
        return cls(parts.port or {"redis": 6379}.get(parts.scheme, 5432), parts.hostname or "127.0.0.1")

    def through(self, url: str) -> str:
        """`url` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        user = parts.netloc.rpartition("@")[0]
        netloc = f"{user}@127.0.0.1:{self.port}" if user else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    # --- what a test calls (from its own thread) ---------------------------------------------------------

    def start(self) -> Self:
        self._thread.start()
        self._call(self._set("pass"))
        return self

    def set_mode(self, mode: Mode) -> None:
        self._call(self._set(mode))

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self._shut())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # --- on the proxy's loop ------------------------------------------------------------------------------

    async def _set(self, mode: Mode) -> None:
        self.mode = mode
        if mode == "refuse":
            self._flowing.clear()
            if self._server is not None:
                self._server.close()
                self._server = None
            for writer in list(self._writers):
                with contextlib.suppress(Exception):
                    writer.transport.abort()
            self._writers.clear()
            return
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        if mode == "pass":
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _shut(self) -> None:
        await self._set("refuse")
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            await self._flowing.wait()  # a connection made while hanging connects on once flowing again
            up_reader, upstream = await asyncio.open_connection(*self.target)
            self._writers.add(upstream)
            await asyncio.gather(self._pump(reader, upstream), self._pump(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    self._writers.discard(w)
                    with contextlib.suppress(Exception):
                        w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            await self._flowing.wait()  # in `hang`, bytes are held, never delivered
            if writer.transport.is_closing():
                return
            writer.write(data)
            await writer.drain()
        writer.transport.abort()  # one side ended: end the other
