"""The gateway's one exception tree.

It lives at the bottom layer so that every layer (router, workers, gateway) raises errors that already
know their HTTP status and OpenAI error type; one exception handler in the gateway renders them
(gateway/errors.py).
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


# --- requests, paths and workers


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


class UpstreamTimeout(GatewayError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class PoolOverloaded(GatewayError):
    """Admission control: the pool has as many calls in flight as it may, and the wait ran out."""

    status = 503
    type = "service_unavailable_error"
    code = "pool_overloaded"


# --- client connections (gateway/server_limits.py)


class RequestTimeout(GatewayError):
    """The request's headers or body did not arrive within the server's timeout."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class TooManyConnections(GatewayError):
    """The client's address already holds as many open connections as it may (the type OpenAI gives a 429
    for too many requests)."""

    status = 429
    type = "requests"
    code = "too_many_connections"


class ResponseNotFound(GatewayError):
    """A response (the Responses API) the gateway does not know for the caller's tenant: never made, its pin
    expired, or another tenant's."""

    status = 404
    type = "invalid_request_error"
    code = "response_not_found"


class ResponsesUnavailable(GatewayError):
    """Which replica holds a response cannot be looked up now (the store of the pins is away)."""

    status = 503
    type = "service_unavailable_error"
    code = "responses_unavailable"


class IncompleteBody(GatewayError):
    """The client went away (or was timed out) before its request body was complete. Nobody is left to
    answer: it is raised so that the call stops, is neither billed nor recorded, and renders quietly."""

    status = 400
    type = "invalid_request_error"
    code = "incomplete_body"


# --- keys and roles (gateway/auth/)


class Unauthenticated(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"
    code = "insufficient_permissions"


class AuthUnavailable(GatewayError):
    status = 503
    type = "service_unavailable_error"
    code = "auth_unavailable"


class DatabaseUnreachable(GatewayError):
    """The database did not answer in time, or cannot be reached (a report, an admin read)."""

    status = 503
    type = "service_unavailable_error"
    code = "database_unavailable"


class SessionsUnavailable(GatewayError):
    """The console's session store (Redis) cannot be reached now."""

    status = 503
    type = "service_unavailable_error"
    code = "sessions_unavailable"


# --- rate limits and budgets (gateway/limits/)


class RateLimited(GatewayError):
    """Over a rate limit; `type` is the limit's kind, `requests` or `tokens`, as OpenAI sends it."""

    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class BudgetExceeded(GatewayError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class LimitsUnavailable(GatewayError):
    status = 503
    type = "service_unavailable_error"
    code = "limits_unavailable"


# --- feedback (gateway/learning/feedback.py)


class RequestNotFound(GatewayError):
    """Feedback on a call the feature stash does not hold (unknown, expired, or another tenant's)."""

    status = 404
    type = "invalid_request_error"
    code = "request_not_found"


class FeedbackUnavailable(GatewayError):
    status = 503
    type = "service_unavailable_error"
    code = "feedback_unavailable"


# --- routing (router/)


class RoutingError(GatewayError):
    """A routing decision that ends in an error; carries the rule and the decision trace for explain."""

    def __init__(
        self,
        message: str,
        *,
        rule: str | None = None,
        trace: tuple[object, ...] = (),
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code, headers=headers)
        self.rule = rule
        self.trace = trace


class NoCapableModel(RoutingError):
    """No model in the catalogue (or allowed by the matching rule) can serve the request at all."""

    status = 400
    type = "invalid_request_error"
    code = "no_capable_model"


class NoHealthyModel(RoutingError):
    """Models exist that could serve the request, but every one of their pools is unhealthy."""

    status = 503
    type = "service_unavailable_error"
    code = "no_healthy_model"


class PolicyDenied(RoutingError):
    """A routing policy rule denies the request."""

    status = 403
    type = "permission_error"
    code = "policy_denied"


class PolicyError(GatewayError):
    """Policy files that cannot be used; `errors` holds one `file:line: message` string per problem."""

    status = 422
    type = "invalid_request_error"
    code = "invalid_policy"

    def __init__(self, errors: list[str] | tuple[str, ...]) -> None:
        self.errors = tuple(errors)
        count = len(self.errors)
        head = f"{count} error{'s' if count != 1 else ''} in the routing policy"
        super().__init__(head + ":\n" + "\n".join(self.errors))
