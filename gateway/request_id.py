"""The request id: the client's `x-request-id` when well-formed, else a new one."""

from __future__ import annotations

import os
import re
from typing import Any

from litestar.connection import ASGIConnection

_WELL_FORMED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def new_id() -> str:
    """128 random bits as 32 hex digits (uuid4().hex's form, at a fifth of its cost)."""
    return os.urandom(16).hex()


def request_id(request: ASGIConnection[Any, Any, Any, Any]) -> str:
    """Computed once per request and kept in the ASGI scope, so errors and logs agree."""
    state = request.scope.setdefault("state", {})
    rid: str | None = state.get("request_id")
    if rid is None:
        given = request.headers.get("x-request-id")
        rid = given if given and _WELL_FORMED.fullmatch(given) else new_id()
        state["request_id"] = rid
    return rid
