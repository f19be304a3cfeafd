"""A key's scope (gateway/auth/scope.py): the tenant it is held to, the 403s, filters forced to its
tenant, the development key and `auth: off` seeing every tenant, and a last-known-keys snapshot written
before scopes existed still loading, each key held to its own tenant."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from gateway.accounting.reports import ReportFilters
from gateway.auth import snapshot
from gateway.auth.keys import DEV_SCOPE
from gateway.auth.principal import ANONYMOUS, Principal
from gateway.auth.scope import check_platform, check_tenant, scoped, tenant_scope
from router.errors import Forbidden

pytestmark = pytest.mark.pure

ACME = Principal(tenant="acme", team="money", key_id="key_a", role="finance")
PLATFORM = Principal(tenant="platform", team="money", key_id="key_p", role="finance", scope="all")


def test_a_key_is_held_to_its_tenant_unless_its_scope_is_all() -> None:
    assert ACME.scope == "tenant" and tenant_scope(ACME) == "acme" and tenant_scope(PLATFORM) is None
    check_tenant(ACME, "acme")
    check_tenant(PLATFORM, "globex")
    with pytest.raises(Forbidden) as info:
        check_tenant(ACME, "globex")
    err = info.value
    assert (err.status, err.code, err.param) == (403, "tenant_out_of_scope", "tenant")
    assert ANONYMOUS.scope == "all" and DEV_SCOPE == "all"


def test_filters_are_forced_to_the_callers_tenant() -> None:
    assert scoped(ACME, ReportFilters()) == ReportFilters(tenant="acme")
    assert scoped(ACME, ReportFilters(tenant="acme", team="red")) == ReportFilters(tenant="acme", team="red")
    assert scoped(ACME, ReportFilters(key="key_g")) == ReportFilters(tenant="acme", key="key_g")
    with pytest.raises(Forbidden):
        scoped(ACME, ReportFilters(tenant="globex"))
    assert scoped(PLATFORM, ReportFilters()) == ReportFilters()
    assert scoped(PLATFORM, ReportFilters(tenant="globex")) == ReportFilters(tenant="globex")


def test_fleet_changes_need_scope_all() -> None:
    check_platform(PLATFORM, "reload the policy")
    with pytest.raises(Forbidden) as info:
        check_platform(ACME, "reload the policy")
    assert info.value.code == "platform_scope_required"


def test_a_snapshot_from_before_scopes_loads_each_key_held_to_its_tenant(tmp_path: Path) -> None:
    old = {"tenant": "acme", "team": "ops", "key_id": "key_old", "role": "admin",
           "key_limits": {"rpm": None, "tpm": None, "budget": None, "budget_period": "month"},
           "team_limits": {"rpm": None, "tpm": None, "budget": None, "budget_period": "month"}, "expires_at": None}
    path = tmp_path / snapshot.FILE
    path.write_bytes(msgspec.json.encode({"version": snapshot.VERSION, "written_at": 0.0, "keys": {
        "ab" * 32: {"principal": old, "problem": None}, "cd" * 32: {"principal": None, "problem": "revoked"}}}))
    known = snapshot.read(path)
    assert known is not None
    principal = known[bytes.fromhex("ab" * 32)].principal
    assert principal is not None and (principal.key_id, principal.scope) == ("key_old", "tenant")
    assert known[bytes.fromhex("cd" * 32)] == snapshot.Known(None, "revoked")
    # What is written now carries the scope, and reads back as written.
    snapshot.write(path, snapshot.encode_entries({b"\x01" * 32: snapshot.Known(PLATFORM)}))
    assert snapshot.read(path) == {b"\x01" * 32: snapshot.Known(PLATFORM)}
