"""What every report endpoint (`/v1/reports/...`) does with its query, before and after its handler reads it.

- `report_guard`: the guard each report endpoint declares (`guards=[report_guard]`): the role finance or
  admin (403), and only the query parameters the handler declares (its arguments, by their query names,
  plus any named in the handler's `opt["query"]`); any other is a 400 `unknown_parameter` whose `param`
  names it, never silently ignored (a misspelt filter would otherwise report on everything).
- `report_filters`: the filters of a report (`ReportFilters`) as the caller may apply them: a tenant-scoped
  key's tenant forced to its own, another tenant a 403 `tenant_out_of_scope` (gateway/auth/scope.py).
- `check_format`: the `format` parameter, one of the endpoint's formats (400 otherwise).
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from gateway.accounting.reports import ReportFilters
from gateway.auth.guard import REPORTS, check_role
from gateway.auth.principal import Principal, principal_of
from gateway.auth.scope import scoped
from router.errors import InvalidRequest

FILTER_PARAMS = ("tenant", "team", "key", "model", "route", "operation")  # ReportFilters' fields, as queried


@functools.cache  # keyed by the handler and its path's parameters: bounded by the app's routes
def declared_query(handler: BaseRouteHandler, path_params: frozenset[str]) -> frozenset[str]:
    """The query parameters `handler` takes: those Litestar reads for its arguments, and `opt["query"]`."""
    model = handler.create_kwargs_model(path_parameters=dict.fromkeys(path_params))  # type: ignore[arg-type]
    return frozenset(p.field_alias for p in model.expected_query_params) | frozenset(handler.opt.get("query", ()))


def check_query(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """400 `unknown_parameter` for the first query parameter `handler` does not take."""
    known = declared_query(handler, frozenset(connection.path_params))
    for name in connection.query_params:
        if name not in known:
            raise InvalidRequest(
                f"Unknown query parameter `{name}`; this endpoint takes {', '.join(sorted(known)) or 'none'}.",
                param=name, code="unknown_parameter")


def report_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Who may read a report (finance or admin: the app-wide guard checks it too), and with what query."""
    check_role(principal_of(connection), REPORTS)
    check_query(connection, handler)


def report_filters(p: Principal, **given: str | None) -> ReportFilters:
    """`ReportFilters` of the query's values (FILTER_PARAMS; an empty value is none), within `p`'s scope."""
    return scoped(p, ReportFilters(**{name: value or None for name, value in given.items()}))


def check_format(value: str, formats: Collection[str]) -> str:
    if value not in formats:
        raise InvalidRequest(f"format `{value}` is not one of {', '.join(formats)}", param="format",
                             code="invalid_report_query")
    return value
