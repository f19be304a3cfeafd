"""Logs: text (`time level logger: message`) or JSON (one object per line), and the access line.

The access line is one per call to the OpenAI endpoints, written when the call's usage record is built
(by the recorder, off the request path, within `recorder_flush_interval_s` of the call's end), so it
carries what accounting decided: the status, the tokens (the worker's, or an estimate), the exact cost.
It never holds a prompt, a completion or a key: ids, names, numbers.

    text: request_id=9f2c... tenant=default team=dev key_id=dev operation=chat model=demo-small rule=default
          pool=small replica=http://127.0.0.1:41237 status=ok http_status=200 completed=True stream=False
          cache=miss prompt_tokens=12 cached_tokens=0 completion_tokens=16 usage=worker cost=0.0000038000
          currency=USD duration_ms=101.3 ttft_ms=101.2 error=None trace_id=None
    json: {"time": "...", "level": "info", "logger": "gateway.access", "message": "access", "request_id": ...}
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

from gateway.accounting.records import UsageRecord
from gateway.outcome import Outcome

ACCESS = logging.getLogger("gateway.access")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_encode = msgspec.json.Encoder().encode


class AccessLine:
    """The access line's fields; rendered as `key=value` pairs in text, as JSON members in JSON."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.fields.items())


class JsonFormatter(logging.Formatter):
    def __init__(self, process: dict[str, int] | None = None) -> None:
        super().__init__()
        self.process = process or {}  # gateway serve --workers N: {"process": index, "pid": pid}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            **self.process,
        }
        if isinstance(record.msg, AccessLine):
            out["message"] = "access"
            out.update(record.msg.fields)
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return _encode(out).decode()


def configure_logging(level: str, fmt: str, process: int | None = None) -> None:
    """The process's logging, for `gateway serve` and `gateway workers up` (replaces any earlier setup).
    `process`: which of the processes of `gateway serve --workers N` this is (0: the parent, 1..N: those
    serving), named on every line with its pid, as `[process 1 pid 4242]` or JSON members `process`, `pid`."""
    handler = logging.StreamHandler(sys.stderr)
    if process is None:
        handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    elif fmt == "json":
        handler.setFormatter(JsonFormatter({"process": process, "pid": os.getpid()}))
    else:
        tag = f"[process {process} pid {os.getpid()}]"
        handler.setFormatter(logging.Formatter(TEXT_FORMAT.replace("%(name)s", f"{tag} %(name)s")))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health check is noise
    # Neither format shows the caller, thread or process: not gathering them spares every line (an access
    # line per call) a walk up the stack (the logging HOWTO, "Optimization").
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def access(outcome: Outcome, record: UsageRecord, trace_id: str | None) -> None:
    """The access line of a finished call (from the recorder, once its record is built)."""
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    o, r = outcome, record
    duration = (o.finished - o.started) if o.finished is not None else None
    ttft = (o.first_byte - o.started) if o.first_byte is not None else None
    fields: dict[str, Any] = {
        "request_id": o.request_id,
        "record_id": r.request_id if r.request_id != o.request_id else None,
        "tenant": r.tenant, "team": r.team, "key_id": r.key_id,
        "operation": r.operation,
        "model": r.routed_model, "rule": r.policy_rule, "pool": r.pool, "replica": r.replica,
        "status": r.status, "http_status": r.http_status, "completed": o.completed, "stream": o.stream,
        "cache": o.cache, "prompt_tokens": r.prompt_tokens, "cached_tokens": r.cached_tokens,
        "completion_tokens": r.completion_tokens, "usage": r.usage_source,
        "cost": format(r.cost, "f"), "currency": r.currency,
        "duration_ms": _ms(duration), "ttft_ms": _ms(ttft), "error": r.error, "trace_id": trace_id,
    }
    ACCESS.info(AccessLine(fields))


def refused(request_id: str, method: str, path: str, status: int, code: str | None) -> None:
    """The access line of a call the API key check refused (401 / 403 / 503: it never reached a handler,
    nor accounting)."""
    if ACCESS.isEnabledFor(logging.INFO):
        ACCESS.info(AccessLine({"request_id": request_id, "method": method, "path": path, "status": "refused",
                                "http_status": status, "error": code}))
