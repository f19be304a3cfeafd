"""`POST /v1/feedback` against the real app (in this process, simulated workers) on real PostgreSQL, with the
feature stash in process and in the real Redis: calls routed by the quality predictor (a policy whose rule
routes on predicted quality), feedback stored with the call's features, tenants apart, errors, the window."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting import db
from gateway.accounting.models import UsageRecord
from gateway.auth.principal import ANONYMOUS
from gateway.learning.feedback import submit_feedback
from gateway.learning.stash import MemoryStash, RedisStash, StashEntry
from gateway.learning.store import RoutingOutcome
from gateway.redis_batch import RedisBatcher
from router import features
from router.classify import classify
from router.errors import RequestNotFound
from router.predictor import parse_predictor, prior
from tests.fault_proxy import FaultProxy
from tests.inprocess_gateway import InProcessGateway
from tests.learning_support import Database, learned_policies
from tests.limits_support import delete_prefix, require_redis, unique_prefix
from tests.services import redis_url

PREDICTOR = prior(["demo-small", "demo-large"], 0.9)
ROUTING = """\
defaults:
  reference_model: demo-large
  cache: {ttl_s: 600, when: deterministic}
  predictor: predictor.json
  quality_target: 0.8
rules:
  - name: pinned
    description: A model named by the client is served as asked (the predictor is not consulted).
    match: {requested: [model]}
    route: requested
  - name: learned
    description: The cheapest model predicted to reach the target.
    route: cheapest_above
"""
BASE = {"recorder_flush_interval_s": 0.05, "auto_migrate": True, "auth_cache_ttl_s": 60.0}


def start(root: Path, database_url: str, **config: Any) -> InProcessGateway:
    folder, _ = learned_policies(root, ROUTING, PREDICTOR)
    return InProcessGateway(root, {**BASE, "database_url": database_url, "policies_dir": str(folder), **config}).start()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    """Stash in process (no redis_url), window and bound at their defaults."""
    database = Database()
    gateway = start(tmp_path_factory.mktemp("feedback"), database.url)
    yield gateway
    gateway.stop()
    database.drop()


def new_key(gw: InProcessGateway, tenant: str, role: str = "app", team: str = "red") -> tuple[str, str]:
    r = httpx.post(gw.base_url + "/admin/keys", headers=gw.auth, json={"tenant": tenant, "team": team, "role": role})
    assert r.status_code == 201, r.text
    return r.json()["key"], r.json()["id"]


@pytest.fixture(scope="module")
def acme(gw: InProcessGateway) -> tuple[str, str]:
    return new_key(gw, "acme")


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def body(text: str | None = None, **extra: Any) -> dict[str, Any]:
    content = text or f"Summarise the plot of a short story, please. {uuid.uuid4().hex[:8]}"
    return {"model": "auto", "messages": [{"role": "user", "content": content}], "max_tokens": 8, **extra}


def chat(gw: InProcessGateway, key: str, payload: dict[str, Any]) -> httpx.Response:
    r = httpx.post(gw.api + "/chat/completions", headers=bearer(key), json=payload, timeout=30)
    assert r.status_code == 200, r.text
    return r


def feedback(gw: InProcessGateway, key: str, payload: Any) -> httpx.Response:
    return httpx.post(gw.api + "/feedback", headers=bearer(key), json=payload, timeout=30)


def error(r: httpx.Response) -> dict[str, Any]:
    assert r.headers["content-type"].startswith("application/json") and "x-request-id" in r.headers
    e: dict[str, Any] = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"}
    return e


async def _outcomes(engine: AsyncEngine, request_id: str) -> list[RoutingOutcome]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(RoutingOutcome).where(RoutingOutcome.request_id == request_id))).all()
    return list(rows)  # type: ignore[arg-type]


def outcomes(gw: InProcessGateway, request_id: str) -> list[Any]:
    return gw.call(lambda: _outcomes(gw.ctx.accounting.engine, request_id))


def expected_vector(gw: InProcessGateway, payload: dict[str, Any]) -> features.Vector:
    classifier = gw.ctx.policies.active.policy.classifier
    return features.vector(payload, classify(payload, "chat", {}, classifier))


def test_feedback_is_stored_with_the_calls_features_tenant_and_model(gw: InProcessGateway,
                                                                     acme: tuple[str, str]) -> None:
    key, key_id = acme
    payload = body()
    r = chat(gw, key, payload)
    rid, model = r.headers["x-request-id"], r.headers["x-gateway-model"]
    assert r.headers["x-gateway-route"].startswith("learned")  # the predictor routed it
    fb = feedback(gw, key, {"request_id": rid, "score": 0.25})
    assert fb.status_code == 200, fb.text
    assert fb.json() == {"request_id": rid, "model": model, "score": 0.25, "source": "feedback"}
    (row,) = outcomes(gw, rid)
    assert (row.tenant, row.team, row.key_id, row.model) == ("acme", "red", key_id, model)
    assert (row.score, row.label, row.source, row.judge) == (0.25, None, "feedback", None)
    assert row.feature_layout == features.FEATURES
    assert row.predictor == parse_predictor(PREDICTOR)[0].hash  # type: ignore[union-attr]
    assert row.created_at.tzinfo is not None
    assert np.array_equal(features.decode_vector(row.features), expected_vector(gw, payload))
    # The row is about the call accounting recorded under the same id.
    gw.flush()

    async def recorded() -> list[Any]:
        async with gw.ctx.accounting.engine.connect() as conn:
            return list((await conn.execute(select(UsageRecord.request_id, UsageRecord.routed_model)
                                            .where(UsageRecord.request_id == rid))).all())

    assert gw.call(recorded) == [(rid, model)]


def test_a_second_feedback_replaces_the_first(gw: InProcessGateway, acme: tuple[str, str]) -> None:
    key = acme[0]
    rid = chat(gw, key, body()).headers["x-request-id"]
    assert feedback(gw, key, {"request_id": rid, "score": 0.9}).status_code == 200
    r = feedback(gw, key, {"request_id": rid, "label": "bad"})
    assert r.status_code == 200 and r.json()["score"] == 0.0
    (row,) = outcomes(gw, rid)
    assert (row.score, row.label) == (0.0, "bad")
    r = feedback(gw, key, {"request_id": rid, "score": 0.7, "label": "bad"})  # both: the score counts
    assert r.status_code == 200 and r.json()["score"] == 0.7
    (row,) = outcomes(gw, rid)
    assert (row.score, row.label) == (0.7, "bad")
    assert feedback(gw, key, {"request_id": rid, "label": "good"}).json()["score"] == 1.0


def test_another_tenant_cannot_find_the_call(gw: InProcessGateway, acme: tuple[str, str]) -> None:
    key = acme[0]
    rid = chat(gw, key, body()).headers["x-request-id"]
    other = new_key(gw, "globex")[0]
    for stranger in (other, gw.key):  # another tenant's app key; the admin development key (tenant default)
        r = feedback(gw, stranger, {"request_id": rid, "score": 1})
        assert r.status_code == 404
        e = error(r)
        assert (e["type"], e["code"], e["param"]) == ("invalid_request_error", "request_not_found", "request_id")
        assert rid in e["message"] and "this tenant" in e["message"] and "900 s" in e["message"]
    assert outcomes(gw, rid) == []
    # Same team name, same tenant, another key: its calls are the tenant's.
    colleague = new_key(gw, "acme", team="blue")[0]
    assert feedback(gw, colleague, {"request_id": rid, "score": 1}).status_code == 200


def test_only_the_model_that_answered_may_be_named(gw: InProcessGateway, acme: tuple[str, str]) -> None:
    key = acme[0]
    r = chat(gw, key, body())
    rid, model = r.headers["x-request-id"], r.headers["x-gateway-model"]
    other = "demo-large" if model == "demo-small" else "demo-small"
    bad = feedback(gw, key, {"request_id": rid, "score": 1, "model": other})
    assert bad.status_code == 400
    e = error(bad)
    assert e["param"] == "model" and f"`{model}`" in e["message"] and f"`{other}`" in e["message"]
    assert outcomes(gw, rid) == []
    ok = feedback(gw, key, {"request_id": rid, "score": 1, "model": model})
    assert ok.status_code == 200 and ok.json()["model"] == model


@pytest.mark.parametrize(("payload", "param"), [
    ({"score": 1}, "request_id"),
    ({"request_id": 7, "score": 1}, "request_id"),
    ({"request_id": "", "score": 1}, "request_id"),
    ({"request_id": "r" * 129, "score": 1}, "request_id"),
    ({"request_id": "r"}, "score"),
    ({"request_id": "r", "score": 1.5}, "score"),
    ({"request_id": "r", "score": -0.01}, "score"),
    ({"request_id": "r", "score": "high"}, "score"),
    ({"request_id": "r", "score": True}, "score"),
    ({"request_id": "r", "label": "meh"}, "label"),
    ({"request_id": "r", "label": ["good"]}, "label"),
    ({"request_id": "r", "score": 1, "model": 3}, "model"),
    ({"request_id": "r", "score": 1, "prompt": "the text"}, "prompt"),
])
def test_bad_bodies_get_400_naming_the_field(gw: InProcessGateway, acme: tuple[str, str], payload: dict[str, Any],
                                             param: str) -> None:
    r = feedback(gw, acme[0], payload)
    assert r.status_code == 400, r.text
    e = error(r)
    assert (e["type"], e["param"]) == ("invalid_request_error", param)


def test_a_body_that_is_not_a_json_object_gets_400(gw: InProcessGateway, acme: tuple[str, str]) -> None:
    for raw in (b"{", b"[1]", b"", b'{"request_id": "caf\xc3\x28", "score": 1}', b"[" * 100_000 + b"]" * 100_000,
                b'{"request_id": "r", "score": 1, "x": ' + b"[" * 500 + b"]" * 500 + b"}"):
        r = httpx.post(gw.api + "/feedback", headers={**bearer(acme[0]), "content-type": "application/json"},
                       content=raw)
        assert r.status_code == 400 and error(r)["code"] in ("invalid_json", "nesting_too_deep"), raw[:80]


def test_roles(gw: InProcessGateway) -> None:
    assert httpx.post(gw.api + "/feedback", json={"request_id": "r", "score": 1}).status_code == 401
    finance = new_key(gw, "acme", role="finance")[0]
    r = feedback(gw, finance, {"request_id": "r", "score": 1})
    assert r.status_code == 403 and error(r)["code"] == "insufficient_permissions"
    assert httpx.get(gw.api + "/feedback", headers=gw.auth).status_code == 405


def test_only_calls_the_predictor_routed_and_a_worker_answered_are_kept(gw: InProcessGateway,
                                                                       acme: tuple[str, str]) -> None:
    key = acme[0]
    # A model named by the client: the predictor was not consulted.
    named = chat(gw, key, {**body(), "model": "demo-large"})
    assert named.headers["x-gateway-route"] == "pinned"
    # A cache hit: the first (deterministic) call was answered by a worker, the second by the cache.
    payload = body(temperature=0)
    first, second = chat(gw, key, payload), chat(gw, key, payload)
    assert (first.headers["x-gateway-cache"], second.headers["x-gateway-cache"]) == ("miss", "hit")
    for r in (named, second):
        assert feedback(gw, key, {"request_id": r.headers["x-request-id"], "score": 1}).status_code == 404
    assert feedback(gw, key, {"request_id": first.headers["x-request-id"], "score": 1}).status_code == 200


def test_a_streamed_call_can_be_rated_once_finished(gw: InProcessGateway, acme: tuple[str, str]) -> None:
    key = acme[0]
    with httpx.stream("POST", gw.api + "/chat/completions", headers=bearer(key), json=body(stream=True)) as r:
        assert r.status_code == 200
        rid = r.headers["x-request-id"]
        assert b"[DONE]" in r.read()
    fb = feedback(gw, key, {"request_id": rid, "score": 0.5})
    assert fb.status_code == 200, fb.text
    assert [row.score for row in outcomes(gw, rid)] == [0.5]


def test_a_client_chosen_request_id_rates_the_call_recorded_under_the_gateways(gw: InProcessGateway,
                                                                             acme: tuple[str, str]) -> None:
    key = acme[0]
    mine = f"client-{uuid.uuid4().hex}"
    r = httpx.post(gw.api + "/chat/completions", headers={**bearer(key), "x-request-id": mine}, json=body())
    assert r.status_code == 200 and r.headers["x-request-id"] == mine
    assert feedback(gw, key, {"request_id": mine, "score": 1}).status_code == 200
    gw.flush()

    async def recorded() -> list[Any]:
        async with gw.ctx.accounting.engine.connect() as conn:
            return list((await conn.execute(select(UsageRecord.request_id)
                                            .where(UsageRecord.client_request_id == mine))).scalars())

    (record_id,) = gw.call(recorded)
    assert record_id != mine and [row.score for row in outcomes(gw, record_id)] == [1.0]


# --- the window, the bound, the database down (in process) --------------------------------------------------


@pytest.fixture(scope="module")
def proxy() -> Iterator[tuple[FaultProxy, str]]:
    """A fault proxy in front of a database of the module's own."""
    database = Database()
    with FaultProxy.before(database.url) as p:
        yield p, p.through(database.url)
    database.drop()


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory,
          proxy: tuple[FaultProxy, str]) -> Iterator[InProcessGateway]:
    """A 1 s window and a stash of 2 entries, its database behind the proxy."""
    gateway = start(tmp_path_factory.mktemp("short"), proxy[1], feedback_window_s=1, feedback_stash_entries=2)
    yield gateway
    gateway.stop()


def test_the_in_process_stash_keeps_the_newest_entries_within_the_window(short: InProcessGateway) -> None:
    key = short.key
    rids = [chat(short, key, body()).headers["x-request-id"] for _ in range(3)]
    assert len(short.ctx.feedback) == 2  # type: ignore[arg-type]
    r = feedback(short, key, {"request_id": rids[0], "score": 1})  # pushed out by the bound
    assert r.status_code == 404 and "window of 1 s" in error(r)["message"]
    assert feedback(short, key, {"request_id": rids[2], "score": 1}).status_code == 200
    time.sleep(1.2)
    for rid in rids[1:]:  # past the window
        assert feedback(short, key, {"request_id": rid, "score": 1}).status_code == 404


def test_feedback_gets_503_while_the_database_is_unreachable(
        short: InProcessGateway, proxy: tuple[FaultProxy, str]) -> None:
    p = proxy[0]
    key = short.key  # its lookup is cached (auth_cache_ttl_s 60): the key check needs no database below
    rid = chat(short, key, body()).headers["x-request-id"]
    p.set_mode("refuse")
    try:
        r = feedback(short, key, {"request_id": rid, "score": 0.4})
        assert r.status_code == 503, r.text
        e = error(r)
        assert (e["type"], e["code"]) == ("service_unavailable_error", "feedback_unavailable")
        assert "database" in e["message"] and r.headers["retry-after"]
    finally:
        p.set_mode("pass")
    r = feedback(short, key, {"request_id": rid, "score": 0.4})  # the client's retry
    assert r.status_code == 200, r.text
    assert [row.score for row in outcomes(short, rid)] == [0.4]


# --- the stash in Redis --------------------------------------------------------------------------------------


def test_with_redis_the_stash_entry_expires_with_the_window(tmp_path: Path) -> None:
    require_redis()
    prefix = unique_prefix()
    database = Database()
    client = redis.Redis.from_url(redis_url())
    gateway = start(tmp_path, database.url, redis_url=redis_url(), feedback_key_prefix=prefix, feedback_window_s=2,
                    limits_key_prefix=prefix + "limits:", cache_key_prefix=prefix + "cache:")
    try:
        acme_key = new_key(gateway, "acme")[0]
        r = chat(gateway, acme_key, body())
        rid = r.headers["x-request-id"]
        # Feedback at once: it waits for the call's write, which rides along with the next round trip.
        assert feedback(gateway, acme_key, {"request_id": rid, "score": 0.6}).status_code == 200
        key = f"{prefix}acme:{rid}"
        assert 0 < client.ttl(key) <= 2
        assert [(row.tenant, row.score) for row in outcomes(gateway, rid)] == [("acme", 0.6)]
        globex = new_key(gateway, "globex")[0]
        assert feedback(gateway, globex, {"request_id": rid, "score": 1}).status_code == 404
        deadline = time.monotonic() + 5
        while client.exists(key) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not client.exists(key)
        assert feedback(gateway, acme_key, {"request_id": rid, "score": 1}).status_code == 404
        assert [row.score for row in outcomes(gateway, rid)] == [0.6]
    finally:
        gateway.stop()
        client.close()
        delete_prefix(prefix)
        database.drop()


# --- units ------------------------------------------------------------------------------------------------


def entry(n: int) -> StashEntry:
    return StashEntry(f"rec-{n}", "demo-small", "acme", None, None, None, features.FEATURES, bytes([n]) * 4)


async def test_memory_stash_bound_and_expiry() -> None:
    now = [0.0]
    stash = MemoryStash(10, 3, clock=lambda: now[0])
    for n in range(5):
        stash.put("acme", f"r{n}", entry(n))
        now[0] += 1
    assert len(stash) == 3
    assert [await stash.get("acme", f"r{n}") for n in range(2)] == [None, None]
    assert (await stash.get("acme", "r4")) == entry(4)
    assert await stash.get("globex", "r4") is None
    stash.put("acme", "r2", entry(9))  # the same id again (at 5): the latest call, now the newest entry
    now[0] = 12.5  # r3 (put at 3) expires at 13, r4 at 14, r2 at 15
    assert await stash.get("acme", "r3") == entry(3)
    now[0] = 13.0
    assert await stash.get("acme", "r3") is None
    stash.put("acme", "r5", entry(5))  # over the bound: the oldest (r3) goes
    assert len(stash) == 3 and await stash.get("acme", "r2") == entry(9)
    now[0] = 15.0
    stash.put("acme", "r6", entry(6))  # r4 goes by the bound, r2 because it expired
    assert len(stash) == 2 and await stash.get("acme", "r5") == entry(5)


async def test_redis_stash_reads_its_own_pending_write(aredis: Redis) -> None:
    """The batcher sends a read before the `later` writes it takes along: a lookup right after a call
    must still find the call's entry."""
    prefix = unique_prefix()
    batcher = RedisBatcher(aredis, later_s=5.0)  # the write waits for company: the lookup is its company
    stash = RedisStash(batcher, prefix, 30)
    try:
        stash.put("acme", "r1", entry(1))
        started = time.monotonic()
        assert await stash.get("acme", "r1") == entry(1)
        assert await stash.get("globex", "r1") is None  # this one went to Redis, with the write
        assert time.monotonic() - started < 1
        assert 28 <= await aredis.ttl(f"{prefix}acme:r1") <= 30
        assert await RedisStash(batcher, prefix, 30).get("acme", "r1") == entry(1)  # from Redis, as another process
    finally:
        await batcher.aclose()
        delete_prefix(prefix)


async def test_feedback_off_is_a_404_that_says_so(tmp_path: Path) -> None:
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}")
    try:
        with pytest.raises(RequestNotFound, match="Feedback is off"):
            await submit_feedback(None, engine, ANONYMOUS, b'{"request_id": "r", "score": 1}')
    finally:
        await engine.dispose()
