"""The gateway's one exception tree.

It lives at the bottom layer so that every layer (router, workers, gateway) raises errors that already
know their HTTP status and OpenAI error type; one exception handler in the gateway renders them.
"""

from __future__ import annotations


class GatewayError(Exception):
    """An error the client sees, in OpenAI's envelope."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class RouteNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class NoHealthyReplica(GatewayError):
    status = 503
    type = "service_unavailable_error"
    code = "no_healthy_replica"


class UpstreamUnavailable(GatewayError):
    """Every replica tried refused the connection or failed before answering."""

    status = 502
    type = "upstream_error"
    code = "upstream_unavailable"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class PoolOverloaded(GatewayError):
    """Admission control: the pool has as many calls in flight as it may, and the wait ran out."""

    status = 503
    type = "service_unavailable_error"
    code = "pool_overloaded"
