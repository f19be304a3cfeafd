"""The console's pages as data: each page's path, title and the roles that see it (in the navigation and
at its door: the console's guard reads the page off the handler's `opt`)."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.auth.guard import ADMIN, REPORTS
from gateway.auth.principal import Role

PAGE_OPT = "console_page"  # a handler's opt key: the Page it serves (its roles are checked before it runs)
PUBLIC_OPT = "console_public"  # a handler's opt key: no session needed (sign-in, static files)


class Page(msgspec.Struct, frozen=True, kw_only=True):
    path: str  # as served, /console/...
    title: str
    name: str  # the nav link's data-testid: nav-<name>
    roles: frozenset[Role] = REPORTS

    @property
    def opt(self) -> dict[str, Any]:
        """The `opt` of the page's handlers."""
        return {PAGE_OPT: self}


OVERVIEW = Page(path="/console/", title="Overview", name="overview")
SPEND = Page(path="/console/spend", title="Spend", name="spend")
BUDGETS = Page(path="/console/budgets", title="Budgets", name="budgets")
INVOICES = Page(path="/console/invoices", title="Invoices", name="invoices")
ROUTING = Page(path="/console/routing", title="Routing", name="routing", roles=ADMIN)
WORKERS = Page(path="/console/workers", title="Workers", name="workers", roles=ADMIN)
KEYS = Page(path="/console/keys", title="Keys", name="keys", roles=ADMIN)

NAV: tuple[Page, ...] = (OVERVIEW, SPEND, BUDGETS, INVOICES, ROUTING, WORKERS, KEYS)  # in the navigation's order


def visible(role: Role) -> list[Page]:
    """The pages a role sees in the navigation."""
    return [p for p in NAV if role in p.roles]
