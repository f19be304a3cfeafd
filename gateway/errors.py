"""One place that renders every error in OpenAI's envelope with its status."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException
from sqlalchemy.exc import DBAPIError

from gateway.request_id import request_id
from router.errors import GatewayError, InvalidRequest, MethodNotAllowed, RequestTooLarge, RouteNotFound

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
    if not str(getattr(exc.orig, "sqlstate", None) or "").startswith(DATA_EXCEPTION):
        return on_unexpected(request, exc)
    log.info("request %s: the database refused a value of it (%s)", request_id(request), type(exc.orig).__name__)
    return error_response(request, InvalidRequest(
        "A value in this request cannot be stored or searched for (for example, it holds a NUL character).",
        code="invalid_value"))


def on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("request %s failed unexpectedly", request_id(request))
    return error_response(request, GatewayError("The gateway failed to handle this request.", code="internal_error"))


EXCEPTION_HANDLERS: dict[Any, Any] = {
    GatewayError: on_gateway_error,
    HTTPException: on_http_exception,
    DBAPIError: on_database_error,
    Exception: on_unexpected,
}
