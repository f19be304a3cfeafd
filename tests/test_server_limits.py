"""Server timeouts and the per-address connection cap (gateway/server_limits.py), against `gateway serve` with
raw sockets on loopback: slow headers, slow or abandoned bodies, idle kept-alive connections, and more
connections from one address than it may hold. An abandoned upload leaves no usage record."""

from __future__ import annotations

import json
import logging
import select
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from gateway.server_limits import Reports
from gateway.settings import SettingsError, load_settings
from tests.gateway_process import DEV_KEY, GatewayProcess, start_gateway

TIMEOUT_S = 1.0  # the header, body and idle timeouts of the `limited` gateway
CLOSED_WITHIN_S = 3.5  # a connection past a 1 s timeout is closed by then (uvicorn's own keep-alive is 5 s)
BODY = json.dumps({"model": "demo-small", "messages": [{"role": "user", "content": "Hello there."}],
                   "max_tokens": 3}).encode()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = start_gateway(tmp_path_factory.mktemp("limited"), {
        "recorder_flush_interval_s": 0.05, "client_header_timeout_s": TIMEOUT_S, "client_body_timeout_s": TIMEOUT_S,
        "client_idle_timeout_s": TIMEOUT_S})
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """At most 4 connections per address; timeouts long enough that held connections stay for the test."""
    gw = start_gateway(tmp_path_factory.mktemp("capped"), {
        "client_max_connections_per_address": 4, "client_header_timeout_s": 60, "client_idle_timeout_s": 60})
    yield gw
    gw.stop()


def connect(gw: GatewayProcess, source: str = "127.0.0.1") -> socket.socket:
    host, port = gw.base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect((host, int(port)))
    return sock


def head(path: str, body_length: int | None = None, request_id: str | None = None) -> bytes:
    lines = [f"{'GET' if body_length is None else 'POST'} {path} HTTP/1.1", "host: gateway",
             f"authorization: Bearer {DEV_KEY}"]
    if body_length is not None:
        lines += ["content-type: application/json", f"content-length: {body_length}"]
    if request_id is not None:
        lines.append(f"x-request-id: {request_id}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def until_closed(sock: socket.socket, within_s: float = CLOSED_WITHIN_S) -> tuple[bytes, bool]:
    """What the server sends until it closes the connection, and whether it closed it within `within_s`."""
    received = b""
    deadline = time.monotonic() + within_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return received, True
        if not chunk:
            return received, True
        received += chunk
    return received, False


def answer(sock: socket.socket) -> tuple[int, bytes]:
    """One whole answer (with a content-length) on a kept-alive connection: its status and body."""
    sock.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    top, rest = data.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":")[1]) for line in top.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(top.split(b" ")[1]), rest


def error_of(raw: bytes) -> tuple[int, dict[str, object]]:
    top, body = raw.split(b"\r\n\r\n", 1)
    return int(top.split(b" ")[1]), msgspec.json.decode(body)["error"]


def record_of(gw: GatewayProcess, client_request_id: str) -> tuple[str, str, str] | None:
    with sqlite3.connect(Path(gw.log_path).parent / ".gateway" / "gateway.db") as conn:
        row = conn.execute("SELECT status, received_at, finished_at FROM usage_records WHERE client_request_id = ?",
                           (client_request_id,)).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def recorded_call(gw: GatewayProcess) -> None:
    """A whole call whose record has arrived: the records of everything before it had time to arrive too."""
    rid = f"control-{uuid.uuid4().hex[:8]}"
    with connect(gw) as sock:
        sock.sendall(head("/v1/chat/completions", len(BODY), rid) + BODY)
        assert answer(sock)[0] == 200
    deadline = time.monotonic() + 10
    while record_of(gw, rid) is None:
        assert time.monotonic() < deadline, "the control call was not recorded"
        time.sleep(0.05)
    time.sleep(0.2)  # a few more of the recorder's flushes (every 0.05 s)


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_headers_trickled_past_the_header_timeout_get_408_and_are_closed(limited: GatewayProcess) -> None:
    socks = [connect(limited) for _ in range(20)]
    for sock in socks:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n")
    answers: dict[socket.socket, tuple[bytes, bool]] = {}
    deadline = time.monotonic() + CLOSED_WITHIN_S
    n = 0
    while len(answers) < len(socks) and time.monotonic() < deadline:
        n += 1
        readable, _, _ = select.select([s for s in socks if s not in answers], [], [], 0.2)
        for sock in readable:  # the server spoke: its answer, until it closes
            answers[sock] = until_closed(sock, 1.0)
        for sock in socks:  # one more header line to the others, every 0.2 s: never the end
            if sock not in answers:
                sock.sendall(f"x-slow-{n}: {n}\r\n".encode())
        with connect(limited) as other:  # meanwhile the gateway serves everyone else
            other.sendall(head("/healthz"))
            assert answer(other)[0] == 200
    assert len(answers) == len(socks), f"{len(socks) - len(answers)} slow connections still open"
    for raw, closed in answers.values():
        assert closed
        status, error = error_of(raw)
        assert status == 408 and error["code"] == "request_timeout" and error["type"] == "invalid_request_error"
    for sock in socks:
        sock.close()


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(limited: GatewayProcess) -> None:
    with connect(limited) as sock:
        assert until_closed(sock) == (b"", True)


def test_a_body_slower_than_the_body_timeout_gets_408_and_no_record(limited: GatewayProcess) -> None:
    rid = f"slow-body-{uuid.uuid4().hex[:8]}"
    with connect(limited) as sock:
        sock.sendall(head("/v1/chat/completions", len(BODY), rid) + BODY[:10])
        raw, closed = b"", False
        deadline = time.monotonic() + CLOSED_WITHIN_S
        for byte in BODY[10:-1]:  # a byte every 0.1 s: a body that never ends in time
            if time.monotonic() > deadline:
                break
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.1)
        raw, closed = until_closed(sock, 0.5)
    assert closed
    status, error = error_of(raw)
    assert status == 408 and error["code"] == "request_timeout" and "body" in str(error["message"])
    recorded_call(limited)
    assert record_of(limited, rid) is None


def test_a_client_leaving_mid_body_leaves_no_record(limited: GatewayProcess) -> None:
    rid = f"left-{uuid.uuid4().hex[:8]}"
    with connect(limited) as sock:
        sock.sendall(head("/v1/chat/completions", len(BODY), rid) + BODY[:20])
        time.sleep(0.3)
    recorded_call(limited)
    assert record_of(limited, rid) is None  # was: a `rejected` record (400: the half body is not JSON)


def test_a_slow_body_in_time_is_recorded_from_the_arrival_of_its_headers(limited: GatewayProcess) -> None:
    rid = f"slow-ok-{uuid.uuid4().hex[:8]}"
    with connect(limited) as sock:
        arrived = time.time()
        sock.sendall(head("/v1/chat/completions", len(BODY), rid))
        for part in (BODY[:30], BODY[30:60]):
            sock.sendall(part)
            time.sleep(0.25)
        last = time.time()
        sock.sendall(BODY[60:])
        assert answer(sock)[0] == 200
    deadline = time.monotonic() + 10
    while (record := record_of(limited, rid)) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    status, received_at, finished_at = record
    assert status == "ok"
    assert arrived - 0.2 < utc(received_at) < arrived + 0.2  # when the headers came, not the body's end
    assert utc(finished_at) >= last - 0.05


def test_an_idle_kept_alive_connection_is_closed_after_the_idle_timeout(limited: GatewayProcess) -> None:
    with connect(limited) as sock:
        sock.sendall(head("/healthz"))
        assert answer(sock)[0] == 200
        assert until_closed(sock) == (b"", True)


def test_blank_lines_do_not_keep_an_idle_connection_open(limited: GatewayProcess) -> None:
    with connect(limited) as sock:
        sock.sendall(head("/healthz"))
        assert answer(sock)[0] == 200
        deadline = time.monotonic() + 2 * TIMEOUT_S + CLOSED_WITHIN_S
        closed = False
        while not closed and time.monotonic() < deadline:  # each cancels uvicorn's keep-alive timer
            try:
                sock.sendall(b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            closed = until_closed(sock, 0.2)[1]
        assert closed


def test_connections_beyond_the_per_address_cap_are_refused_and_the_others_served(capped: GatewayProcess) -> None:
    held = [connect(capped) for _ in range(4)]
    try:
        for sock in held:
            sock.sendall(head("/healthz"))
            assert answer(sock)[0] == 200
        for _ in range(3):
            with connect(capped) as extra:
                raw, closed = until_closed(extra)
            assert closed
            status, error = error_of(raw)
            assert status == 429 and error["code"] == "too_many_connections" and "at most 4" in str(error["message"])
        with connect(capped, source="127.0.0.2") as other:  # another address is not affected
            other.sendall(head("/healthz"))
            assert answer(other)[0] == 200
        for sock in held:  # nor are the connections under the cap
            sock.sendall(head("/v1/chat/completions", len(BODY)) + BODY)
            assert answer(sock)[0] == 200
        held.pop().close()
        deadline = time.monotonic() + 5
        while True:  # a closed connection frees its place (once the server has seen it go)
            with connect(capped) as again:
                again.sendall(head("/healthz"))
                raw, _ = until_closed(again, 1.0)
            if raw.startswith(b"HTTP/1.1 200"):
                break
            assert time.monotonic() < deadline, raw
            time.sleep(0.1)
    finally:
        for sock in held:
            sock.close()
    refusals = [line for line in capped.log().splitlines() if "refused" in line and "127.0.0.1" in line]
    assert len(refusals) == 1, refusals  # one line a minute per address, not one per refusal
    assert "client_max_connections_per_address" in refusals[0]


@pytest.mark.pure
def test_reports_log_once_per_interval_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    reports = Reports(interval_s=60)
    with caplog.at_level(logging.WARNING, logger="gateway.server"):
        for t in (0.0, 1.0, 2.0, 59.0):
            reports.note("10.0.0.1", t, "%d refused from %s", "10.0.0.1")
        reports.note("10.0.0.2", 3.0, "%d refused from %s", "10.0.0.2")
        reports.note("10.0.0.1", 61.0, "%d refused from %s", "10.0.0.1")
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in lines] == ["1 refused from 10.0.0.1", "1 refused from 10.0.0.2",
                                                      "4 refused from 10.0.0.1"]


@pytest.mark.pure
@pytest.mark.parametrize(("key", "value"), [("client_header_timeout_s", 0), ("client_body_timeout_s", -1),
                                            ("client_idle_timeout_s", 0), ("client_max_connections_per_address", -1)])
def test_impossible_server_limits_are_refused(key: str, value: float) -> None:
    with pytest.raises(SettingsError, match=key):
        load_settings(env={}, overrides={key: value})
    assert load_settings(env={}).client_max_connections_per_address > 256  # above the benchmark's connections
