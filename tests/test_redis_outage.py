"""Redis going away, hanging and coming back under a running gateway (in this process, its Redis behind
tests/fault_proxy.py): while Redis is away, calls of keys with limits get 503 `limits_unavailable` and the
others are served uncached; once it is back, the very next limited call succeeds and the cache is used
again at once; a Redis that accepts and never answers holds no call past `redis_timeout_s`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.console_support import sign_in
from tests.fault_proxy import FaultProxy
from tests.inprocess_gateway import InProcessGateway
from tests.limits_support import delete_prefix, require_redis, unique_prefix
from tests.services import redis_url

TIMEOUT_S = 0.5  # the gateway's redis_timeout_s
# Deterministic (temperature 0): the cache stores and looks it up. Without it: no cache, only the limits.
CACHEABLE = {"model": "demo-small", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 5,
             "temperature": 0}
PLAIN = {"model": "demo-small", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 5}


@pytest.fixture(scope="module")
def proxy() -> Iterator[FaultProxy]:
    require_redis()
    with FaultProxy.before(redis_url()) as p:
        yield p


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, proxy: FaultProxy) -> Iterator[InProcessGateway]:
    """A cache that, after an error, would leave Redis alone for a minute if nothing told it Redis is back."""
    prefix = unique_prefix()
    gateway = InProcessGateway(tmp_path_factory.mktemp("redis-outage"), {
        "redis_url": proxy.through(redis_url()), "redis_timeout_s": TIMEOUT_S, "cache_retry_s": 60.0,
        "limits_key_prefix": prefix + "limits:", "cache_key_prefix": prefix + "cache:",
        "feedback_key_prefix": prefix + "feedback:",
    }).start()
    yield gateway
    gateway.stop()
    delete_prefix(prefix)


@pytest.fixture
def limited(gw: InProcessGateway, proxy: FaultProxy) -> Iterator[str]:
    """A key with a rate limit and a budget, its first call made: Redis answers, its counters exist."""
    proxy.set_mode("pass")
    r = httpx.post(gw.base_url + "/admin/keys", headers=gw.auth, json={
        "tenant": "acme", "team": "red", "role": "app", "rpm": 100_000, "budget": "1000"})
    assert r.status_code == 201, r.text
    key: str = r.json()["key"]
    assert chat(gw, key, PLAIN).status_code == 200
    yield key
    proxy.set_mode("pass")


def chat(gw: InProcessGateway, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(gw.api + "/chat/completions", headers={"authorization": f"Bearer {key}"}, json=body, timeout=30)


def two_idle_connections(gw: InProcessGateway) -> None:
    """Two round trips at once from idle: the batcher keeps two connections (as under load)."""
    batcher = gw.ctx.limits.backend.batcher  # type: ignore[union-attr]

    async def burst() -> None:
        await asyncio.gather(*(batcher.execute("PING") for _ in range(20)))

    gw.call(burst)


def test_limited_calls_get_503_while_redis_is_away_and_succeed_from_the_next_call_on(
        gw: InProcessGateway, proxy: FaultProxy, limited: str) -> None:
    two_idle_connections(gw)
    proxy.set_mode("refuse")  # Redis goes away: new connections refused, open ones dropped
    away = chat(gw, limited, PLAIN)
    assert away.status_code == 503 and away.json()["error"]["code"] == "limits_unavailable"
    assert away.headers["retry-after"] == "1"
    proxy.set_mode("pass")
    time.sleep(0.05)
    assert chat(gw, limited, PLAIN).status_code == 200  # the very next call: no stale connection in the way


def test_the_cache_is_bypassed_while_redis_is_away_and_used_again_once_it_answers(
        gw: InProcessGateway, proxy: FaultProxy, limited: str) -> None:
    proxy.set_mode("refuse")
    away = chat(gw, gw.key, CACHEABLE)  # the development key: no limits
    assert away.status_code == 200 and away.headers["x-gateway-cache"] == "bypass"
    proxy.set_mode("pass")
    assert chat(gw, limited, PLAIN).status_code == 200  # its admission: Redis answers again
    back = chat(gw, gw.key, CACHEABLE)
    assert back.status_code == 200 and back.headers["x-gateway-cache"] in ("miss", "hit")


def test_a_hung_redis_holds_no_call_past_its_timeout(gw: InProcessGateway, proxy: FaultProxy, limited: str) -> None:
    proxy.set_mode("hang")  # Redis accepts and never answers

    def timed(key: str, body: dict[str, Any]) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        r = client.post(gw.api + "/chat/completions", headers={"authorization": f"Bearer {key}"}, json=body)
        return r, time.monotonic() - started

    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(8) as pool:
        assert timed(gw.key, PLAIN)[0].status_code == 200  # the client's connections made before the clock runs
        answers = list(pool.map(lambda i: timed(limited, PLAIN) if i % 2 else timed(gw.key, CACHEABLE), range(8)))
    for r, waited in answers:
        assert waited < 2 * TIMEOUT_S, waited  # the bound, and not a second one behind a round trip in flight
        if r.request.headers["authorization"] == f"Bearer {limited}":
            assert r.status_code == 503 and r.json()["error"]["code"] == "limits_unavailable"
        else:
            assert r.status_code == 200 and r.headers["x-gateway-cache"] == "bypass"
    proxy.set_mode("pass")
    assert chat(gw, limited, PLAIN).status_code == 200


def test_redis_timeout_is_a_setting(tmp_path: Path) -> None:
    from gateway.settings import SettingsError, load_settings

    assert load_settings(env={}, overrides={"state_dir": str(tmp_path)}).redis_timeout_s == 1.0
    assert load_settings(env={"GATEWAY_REDIS_TIMEOUT_S": "0.25"}, overrides={}).redis_timeout_s == 0.25
    with pytest.raises(SettingsError, match="redis_timeout_s"):
        load_settings(env={}, overrides={"redis_timeout_s": 0})


def test_the_console_answers_503_while_its_sessions_store_is_away(gw: InProcessGateway, proxy: FaultProxy) -> None:
    """Console sessions live in Redis: with Redis away a page is a 503 page (never a 500), and the same
    session works again once Redis is back."""
    proxy.set_mode("pass")
    client = httpx.Client(base_url=gw.base_url, follow_redirects=False, timeout=30)
    assert sign_in(client, gw.key).status_code == 303
    assert client.get("/console/").status_code == 200
    proxy.set_mode("refuse")
    try:
        r = client.get("/console/")
        assert r.status_code == 503 and "sessions_unavailable" in r.text, r.text
        assert r.headers["retry-after"] == "5"
    finally:
        proxy.set_mode("pass")
    assert client.get("/console/").status_code == 200
