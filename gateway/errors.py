"""One place that renders every error in OpenAI's envelope with its status (and, for Anthropic's Messages API,
in Anthropic's)."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException
from sqlalchemy.exc import DBAPIError

from gateway.accounting.db import is_unreachable
from gateway.request_id import request_id
from router.errors import (
    DatabaseUnreachable,
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    RequestTooLarge,
    RouteNotFound,
)

log = logging.getLogger("gateway.errors")


def envelope(message: str, type_: str, param: str | None, code: str | int | None) -> bytes:
    return msgspec.json.encode({"error": {"message": message, "type": type_, "param": param, "code": code}})


def error_response(request: Request[Any, Any, Any], exc: GatewayError) -> Response[bytes]:
    headers = {"x-request-id": request_id(request), **exc.headers}
    return Response(
        envelope(exc.message, exc.type, exc.param, exc.code),
        status_code=exc.status,
        media_type="application/json",
        headers=headers,
    )


def on_gateway_error(request: Request[Any, Any, Any], exc: GatewayError) -> Response[bytes]:
    return error_response(request, exc)


def on_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    # Litestar's own errors (unknown path, wrong method, body over the limit) in the same envelope.
    translated: GatewayError
    if exc.status_code == 404:
        translated = RouteNotFound(f"Unknown path: {request.method} {request.url.path}")
    elif exc.status_code == 405:
        allow = (exc.headers or {}).get("allow")  # the methods the path has (RFC 9110)
        translated = MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}",
                                      headers={"allow": allow} if allow else None)
    elif exc.status_code == 413:
        limit = request.app.request_max_body_size
        translated = RequestTooLarge(f"The request body is larger than the limit of {limit} bytes.")
    else:
        translated = GatewayError(exc.detail, code=str(exc.status_code))
        translated.status = exc.status_code
        translated.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return error_response(request, translated)


DATA_EXCEPTION = "22"  # the SQLSTATE class of a value the database cannot take (PostgreSQL, the SQL standard)


def on_database_error(request: Request[Any, Any, Any], exc: DBAPIError) -> Response[bytes]:
    # A value the client sent (a NUL character, a number past its column's range) in a filter or a path that
    # the handler's own checks let through, refused by the database: the client's to change, not a failure.
    if is_unreachable(exc):
        return _database_away(request, exc)
    if not str(getattr(exc.orig, "sqlstate", None) or "").startswith(DATA_EXCEPTION):
        return on_unexpected(request, exc)
    log.info("request %s: the database refused a value of it (%s)", request_id(request), type(exc.orig).__name__)
    return error_response(request, InvalidRequest(
        "A value in this request cannot be stored or searched for (for example, it holds a NUL character).",
        code="invalid_value"))


def _database_away(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """The database away, or past `report_timeout_s`: a 503 the client may try again after."""
    log.warning("request %s: the database cannot be read now (%s)", request_id(request), type(exc).__name__)
    return error_response(request, DatabaseUnreachable("The database cannot be read now; try again shortly.",
                                                       headers={"retry-after": "5"}))


def on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    if isinstance(exc, ConnectionError):  # a connection refused or reset, or a report's read past its bound
        return _database_away(request, exc)
    log.exception("request %s failed unexpectedly", request_id(request))
    return error_response(request, GatewayError("The gateway failed to handle this request.", code="internal_error"))


EXCEPTION_HANDLERS: dict[Any, Any] = {
    GatewayError: on_gateway_error,
    HTTPException: on_http_exception,
    DBAPIError: on_database_error,
    Exception: on_unexpected,
}


# Anthropic's error type for each status the gateway answers with (its SDK picks the exception by the status).
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 408: "timeout_error", 413: "request_too_large",
                   429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error"}


def anthropic_type(status: int) -> str:
    return ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def as_anthropic(response: Response[bytes]) -> Response[bytes]:
    """An error rendered in OpenAI's envelope, in Anthropic's instead (`POST /v1/messages`, for its SDK): the
    same status, headers and message; the gateway's code as `error.details.error_code`."""
    error = msgspec.json.decode(response.content)["error"]
    status = response.status_code or 500
    body = {"type": "error",
            "error": {"type": anthropic_type(status), "message": error["message"],
                      "details": {"error_code": error["code"]}},
            "request_id": response.headers.get("x-request-id")}
    return Response(msgspec.json.encode(body), status_code=status, media_type="application/json",
                    headers=dict(response.headers))
