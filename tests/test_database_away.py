"""A database that hangs or refuses never stalls calls nor refuses the keys known before it went away:
the real PostgreSQL behind a fault proxy, the real Redis, gateways in process and as `gateway serve`.

- While it hangs (or refuses), calls with keys known before are answered (200) within
  `database_request_timeout_s` plus the call's own time; a revoked key stays refused; a key never known
  and a budget counter never started get a prompt 503; /readyz says ready, database `degraded`.
- A gateway restarted while the database is away authenticates the keys it knew from its snapshot on
  disk (revoked and expired ones stay refused); with no snapshot it is not ready.
"""

from __future__ import annotations

import asyncio
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.accounting.reads import BoundedReads
from gateway.auth import keys as auth_keys
from gateway.auth import snapshot, store
from gateway.auth.principal import Limits
from gateway.auth.service import Auth, start_auth
from gateway.settings import load_settings
from router.errors import AuthUnavailable, Unauthenticated
from tests.fault_proxy import FaultProxy
from tests.gateway_process import start_gateway
from tests.inprocess_gateway import InProcessGateway
from tests.limits_support import delete_prefix, require_redis, unique_prefix
from tests.pg_support import migrated_engine
from tests.services import redis_url

SECRET = "tests-database-away-secret"
TIMEOUT_S = 0.3  # database_request_timeout_s of these gateways
RETRY_S = 0.5  # database_retry_s
# What a call may take besides the database's bound: a simulated worker's answer on a loaded test machine.
# A stalled call waits on the database for a minute (its statement timeout): far beyond this.
CALL_SLACK_S = 3.0
CHAT = {"model": "demo-small", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}


@dataclass
class Keys:
    used: str  # called before the fault
    unused: str  # never called by the gateway before the fault (known from the keys' reload)
    revoked: str  # revoked before the fault
    budgeted: str  # has a budget whose counter is never started before the fault
    revoked_id: str = ""


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def _make_keys(url: str, revoke: bool) -> Keys:
    async with migrated_engine(url) as engine:
        made = {}
        for name in ("used", "unused", "revoked", "budgeted"):
            limits = Limits(budget=Decimal("100"), rpm=1000) if name == "budgeted" else Limits(rpm=100_000)
            made[name] = await store.create_key(engine, SECRET.encode(), tenant="acme", team=name, role="app",
                                                limits=limits)
        if revoke:
            await store.revoke_key(engine, made["revoked"][1].id)
    return Keys(*(made[n][0] for n in ("used", "unused", "revoked", "budgeted")), revoked_id=made["revoked"][1].id)


async def _revoke(url: str, key_id: str) -> None:
    async with migrated_engine(url) as engine:
        await store.revoke_key(engine, key_id)


def config(url: str, **extra: Any) -> dict[str, Any]:
    return {"database_url": url, "key_hash_secret": SECRET, "auth_cache_ttl_s": 0.2, "cache_enabled": False,
            "database_request_timeout_s": TIMEOUT_S, "database_retry_s": RETRY_S, "recorder_flush_interval_s": 0.05,
            **extra}


def chat(base: str, key: str, timeout: float = 30) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    r = httpx.post(base + "/v1/chat/completions", json=CHAT, headers=bearer(key), timeout=timeout)
    return r, time.monotonic() - started


def until(check: Any, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def snapshot_file(state_dir: Path) -> Path:
    return state_dir / snapshot.FILE


def assert_snapshot_holds_no_secrets(path: Path, keys: Keys) -> None:
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    for key in (keys.used, keys.unused, keys.revoked, keys.budgeted):
        assert key not in text and key[:12] not in text
        assert auth_keys.digest(SECRET.encode(), key).hex() not in text  # nor the hash the database keeps


async def _drive(base: str, keys: list[str], seconds: float, concurrency: int) -> list[tuple[int, float]]:
    """Calls, `concurrency` at a time, for `seconds`: (status, seconds taken) of each."""
    out: list[tuple[int, float]] = []
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        async def worker(i: int) -> None:
            n = 0
            while time.monotonic() < stop:
                started = time.monotonic()
                r = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(keys[(i + n) % len(keys)]))
                out.append((r.status_code, time.monotonic() - started))
                n += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return out


@pytest.fixture
def proxy(pg_database: str) -> Iterator[FaultProxy]:
    with FaultProxy.before(pg_database) as p:
        yield p


@pytest.mark.parametrize("fault", ["hang", "refuse"])
def test_calls_go_on_with_the_last_known_keys_while_the_database_hangs_or_refuses(
    fault: str, pg_database: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    require_redis()
    keys = asyncio.run(_make_keys(pg_database, revoke=False))
    prefix = unique_prefix()
    gw = InProcessGateway(tmp_path, config(proxy.through(pg_database), redis_url=redis_url(), dev_key="",
                                           limits_key_prefix=prefix))
    gw.start()
    try:
        assert chat(gw.base_url, keys.used)[0].status_code == 200
        assert chat(gw.base_url, keys.revoked)[0].status_code == 200
        asyncio.run(_revoke(pg_database, keys.revoked_id))
        until(lambda: chat(gw.base_url, keys.revoked)[0].status_code == 401, what="the revocation seen")
        path = snapshot_file(tmp_path / "state")
        until(path.exists, what="the key snapshot written")
        assert_snapshot_holds_no_secrets(path, keys)
        body = httpx.get(gw.base_url + "/readyz").json()
        assert (body["database"], body["auth"]) == ("ok", "ok")

        proxy.set_mode(fault)  # type: ignore[arg-type]
        time.sleep(0.3)  # every cached lookup is past its TTL: the next call of each key asks the database
        bound = TIMEOUT_S + CALL_SLACK_S
        calls = asyncio.run(_drive(gw.base_url, [keys.used, keys.unused], seconds=2.5, concurrency=8))
        assert len(calls) >= 16
        assert [s for s, _ in calls if s != 200] == [], "calls with keys known before the fault were refused"
        slowest = max(t for _, t in calls)
        assert slowest <= bound, f"a call waited {slowest:.2f} s on the database (bound {bound} s)"

        r, took = chat(gw.base_url, keys.revoked)
        assert r.status_code == 401 and "revoked" in r.json()["error"]["message"] and took <= bound
        r, took = chat(gw.base_url, "sk-gw-never-known-0123456789")
        assert (r.status_code, r.json()["error"]["code"]) == (503, "auth_unavailable") and took <= bound
        r, took = chat(gw.base_url, keys.budgeted)  # its budget counter would start from the database
        assert (r.status_code, r.json()["error"]["code"]) == (503, "limits_unavailable") and took <= bound

        started = time.monotonic()
        ready = httpx.get(gw.base_url + "/readyz", timeout=30)
        assert time.monotonic() - started <= bound
        body = ready.json()
        assert ready.status_code == 200 and body["status"] == "ready"
        assert (body["database"], body["auth"]) == ("degraded", "last_known") and body["database_error"]

        proxy.set_mode("pass")  # back: the pool serves again, no connection left stuck in it
        until(lambda: httpx.get(gw.base_url + "/readyz").json()["database"] == "ok", what="the database ok again")
        assert chat(gw.base_url, keys.budgeted)[0].status_code == 200
        assert chat(gw.base_url, keys.used)[0].status_code == 200
        assert httpx.get(gw.base_url + "/readyz").json()["auth"] == "ok"
    finally:
        proxy.set_mode("pass")
        gw.stop()
        delete_prefix(prefix)


@pytest.mark.parametrize("fault", ["refuse", "hang"])
def test_a_gateway_restarted_while_the_database_is_away_knows_its_keys(
    fault: str, pg_database: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    keys = asyncio.run(_make_keys(pg_database, revoke=True))
    cfg = config(proxy.through(pg_database))
    workdir = tmp_path / "gw"
    gw = start_gateway(workdir, cfg, dev_key=None)  # no development key: only the database's keys
    try:
        assert chat(gw.base_url, keys.used)[0].status_code == 200
        until(snapshot_file(workdir / ".gateway").exists, what="the key snapshot written")
    finally:
        gw.stop()
    assert_snapshot_holds_no_secrets(snapshot_file(workdir / ".gateway"), keys)

    proxy.set_mode(fault)  # type: ignore[arg-type]
    gw = start_gateway(workdir, cfg, dev_key=None)  # waits until /readyz is 200
    try:
        for key in (keys.used, keys.unused):
            assert chat(gw.base_url, key)[0].status_code == 200
        body = httpx.get(gw.base_url + "/readyz", timeout=30).json()
        assert (body["status"], body["database"], body["auth"]) == ("ready", "degraded", "last_known")
        r = chat(gw.base_url, keys.revoked)[0]
        assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
        assert chat(gw.base_url, "sk-gw-never-known-0123456789")[0].status_code == 503
    finally:
        gw.stop()
    if fault == "hang":
        return  # what follows does not depend on how the database is away

    # No snapshot (a new state directory), database away: no call can be authenticated, so not ready.
    fresh = start_gateway(tmp_path / "fresh", cfg, dev_key=None, ready=False)
    try:
        until(lambda: httpx.get(fresh.base_url + "/readyz", timeout=30).json().get("database") == "degraded",
              timeout=30, what="the database seen degraded")
        ready = httpx.get(fresh.base_url + "/readyz", timeout=30)
        assert ready.status_code == 503
        assert (ready.json()["status"], ready.json()["auth"]) == ("not_ready", "unavailable")
        r = chat(fresh.base_url, keys.used)[0]
        assert (r.status_code, r.json()["error"]["code"]) == (503, "auth_unavailable")
    finally:
        fresh.stop()
        proxy.set_mode("pass")


async def test_the_snapshot_keeps_expiries_and_revocations_and_is_off_when_asked(
    pg_url: str, tmp_path: Path
) -> None:
    """Auth on its own: the snapshot a reload writes, read by a new Auth while the database refuses."""
    with FaultProxy.before(pg_url) as proxy:
        async with migrated_engine(pg_url) as engine:
            secret = SECRET.encode()
            soon = datetime.now(UTC) + timedelta(seconds=1)
            expiring, _ = await store.create_key(engine, secret, tenant="acme", team="t", role="app", expires_at=soon)
            active, info = await store.create_key(engine, secret, tenant="acme", team="t", role="app")
            revoked, gone = await store.create_key(engine, secret, tenant="acme", team="t", role="app")
            await store.revoke_key(engine, gone.id)
        path = tmp_path / snapshot.FILE
        async with migrated_engine(proxy.through(pg_url)) as through:
            first = Auth(required=True, engine=BoundedReads(through, TIMEOUT_S, RETRY_S), secret=secret,
                         snapshot_path=path)
            await first.start()
            try:
                for _ in range(200):
                    if first.known_keys == 3:
                        break
                    await asyncio.sleep(0.02)
                assert first.known_keys == 3 and path.exists()
            finally:
                await first.close()
            proxy.set_mode("refuse")
            again = Auth(required=True, engine=BoundedReads(through, TIMEOUT_S, RETRY_S), secret=secret,
                         snapshot_path=path)
            await again.start()
            try:
                assert (await again.authenticate(bearer(active))).key_id == info.id
                assert again.readiness() == "last_known"
                with pytest.raises(Unauthenticated, match="revoked"):
                    await again.authenticate(bearer(revoked))
                await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.05)
                with pytest.raises(Unauthenticated, match="expired"):  # active when written, expired since
                    await again.authenticate(bearer(expiring))
                with pytest.raises(AuthUnavailable):
                    await again.authenticate(bearer("sk-gw-never-known"))
            finally:
                await again.close()
            # key_snapshot: false: the file goes, none is read or written, and nothing is known while it refuses.
            settings = load_settings(env={}, overrides={"state_dir": str(tmp_path), "key_snapshot": False,
                                                        "key_hash_secret": SECRET, "database_url": pg_url})
            off = await start_auth(settings, BoundedReads(through, TIMEOUT_S, RETRY_S), None)
            try:
                assert not path.exists() and off.snapshot_path is None
                with pytest.raises(AuthUnavailable):
                    await off.authenticate(bearer(active))
                assert off.readiness() == "unavailable"
            finally:
                await off.close()


REPORTS = ("/v1/reports/usage?group_by=tenant,model", "/v1/reports/overview", "/v1/reports/budgets",
           "/v1/reports/invoice?month=2026-11&tenant=acme")


async def _finance_key(url: str) -> str:
    async with migrated_engine(url) as engine:
        key, _ = await store.create_key(engine, SECRET.encode(), tenant="ops", team="money", role="finance",
                                        scope="all")
    return key


@pytest.mark.parametrize("fault", ["hang", "refuse"])
def test_reports_answer_503_within_their_bound_while_the_database_is_away(
    fault: str, pg_database: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """A report never hangs on the database nor fails with a 500: past `report_timeout_s`, or at once when the
    database refuses, a 503 `database_unavailable` with Retry-After; the same reports answer once it is back."""
    key = asyncio.run(_finance_key(pg_database))
    gw = InProcessGateway(tmp_path, config(proxy.through(pg_database), dev_key="", report_timeout_s=1.0))
    gw.start()
    try:
        for path in REPORTS:
            assert httpx.get(gw.base_url + path, headers=bearer(key), timeout=30).status_code == 200, path
        proxy.set_mode(fault)  # type: ignore[arg-type]
        for path in REPORTS:
            started = time.monotonic()
            r = httpx.get(gw.base_url + path, headers=bearer(key), timeout=30)
            took = time.monotonic() - started
            assert (r.status_code, r.json()["error"]["code"]) == (503, "database_unavailable"), (path, r.text)
            assert r.headers["retry-after"] == "5" and took <= 1.0 + CALL_SLACK_S, (path, took)
        proxy.set_mode("pass")
        until(lambda: all(httpx.get(gw.base_url + p, headers=bearer(key), timeout=30).status_code == 200
                          for p in REPORTS), what="every report answering again")
    finally:
        proxy.set_mode("pass")
        gw.stop()
