"""A key's scope: which tenants' reports, keys and teams its caller may see and manage.

`tenant` (the default): only the key's own tenant. `all`: every tenant (the platform's operators and
finance). Scope narrows a role, never widens it: the role still says which endpoints a key may use
(gateway/auth/guard.py).
"""

from __future__ import annotations

from typing import Protocol, TypeVar

import msgspec

from gateway.auth.principal import Principal
from router.errors import Forbidden


class _TenantFiltered(Protocol):
    @property
    def tenant(self) -> str | None: ...


F = TypeVar("F", bound=_TenantFiltered)


def tenant_scope(p: Principal) -> str | None:
    """The one tenant `p` may see; None: every tenant (scope `all`)."""
    return None if p.scope == "all" else p.tenant


def in_scope(p: Principal, tenant: str) -> bool:
    return p.scope == "all" or tenant == p.tenant


def check_tenant(p: Principal, tenant: str) -> None:
    """403 `tenant_out_of_scope` unless `p` may see `tenant`."""
    if not in_scope(p, tenant):
        raise Forbidden(f"This key sees only tenant `{p.tenant}`; tenant `{tenant}` is out of its scope.",
                        param="tenant", code="tenant_out_of_scope")


def check_platform(p: Principal, what: str) -> None:
    """403 `platform_scope_required` unless `p` sees every tenant: for what changes the whole fleet (its
    workers, its routing policy), which no single tenant's key may do. `what`: the action, for the message."""
    if p.scope != "all":
        raise Forbidden(f"Only a key of scope `all` may {what}: it changes the gateway for every tenant.",
                        code="platform_scope_required")


def scoped(p: Principal, filters: F) -> F:
    """`filters` (a frozen msgspec Struct with a `tenant` field, e.g. `ReportFilters`) as `p` may apply them:
    a tenant-scoped caller's tenant forced to its own (403 when it asked for another one)."""
    if filters.tenant is not None:
        check_tenant(p, filters.tenant)
    own = tenant_scope(p)
    if own is None or filters.tenant == own:
        return filters
    return msgspec.structs.replace(filters, tenant=own)  # type: ignore[type-var]
