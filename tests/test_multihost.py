"""Two gateway hosts behind a real load balancer, one of them killed under load.

Hosts are Linux network namespaces on a bridge (tests/netns_support.py), each running real processes:

    data     10.77.0.10  PostgreSQL (Debian's, a cluster made here) and Redis, shared by both gateways
    workers  10.77.0.20  two `gateway sim` engines (demo-small :8001, demo-large :8002)
    gw1      10.77.0.11  `gateway serve` on :8080, its own state_dir
    gw2      10.77.0.12  `gateway serve` on :8080, its own state_dir
    lb       10.77.0.2   HAProxy (Debian's) on :8080, health checks on /readyz; stats on :8404
    clients  10.77.0.1   this process, in the root namespace, through the balancer only

The workers run on a host of their own, as GPU servers do: a gateway host dying takes no engine with it, so
the calls it had in flight keep running on a worker that outlives it, which is the case double accounting
would come from. Load runs with two keys (one with a budget that runs out), gw1 gets `kill -9` on every
process mid-load, then comes back on the same state_dir and replays its journal. The database must then
hold exactly one record per answered call, none for a call never sent, and the budget must hold exactly.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import csv
import functools
import io
import itertools
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
import yaml

from tests.gateway_process import DEV_KEY
from tests.netns_support import (
    PREFIX,
    Host,
    Network,
    Service,
    http_ok,
    links,
    machine_lock,
    namespaces,
    remove_stale,
    require,
    wait_until,
)
from tests.services import postgres_bin_dir, postgres_problem, redis_problem

GATEWAY = Path(sys.executable).parent / "gateway"
KEY_HASH_SECRET = "multihost-key-hash-secret-0123456789"
DB_URL = "postgresql+asyncpg://postgres@10.77.0.10:5432/gateway"
PG_DSN = "postgresql://postgres@10.77.0.10:5432/gateway"
REDIS_URL = "redis://10.77.0.10:6379/0"
LB_URL = "http://10.77.0.2:8080"
STATS_URL = "http://10.77.0.2:8404/stats;csv"
BUDGET = Decimal("0.002")  # ~200 calls' worth: it runs out during the load, after the kill
LOAD_S = 9.0
LOAD_MAX_S = 20.0  # on a slow machine, the load goes on until the budget has run out, at most this long
KILL_AT_S = 3.0
# HAProxy checks every 250 ms and takes a server out after 2 failures; calls started this long after the
# kill must all go to gw2.
DETECTION_S = 1.5
CONCURRENCY = 16

HAPROXY_CFG = """\
global
    log stdout format raw local0
    maxconn 2000

defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout check 1s
    timeout http-request 10s
    timeout http-keep-alive 5s
    # A stream may be silent while the engine queues or prefills: as long as the gateways' upstream_timeout_s.
    timeout client 300s
    timeout server 300s
    # Retried only when the connection to a gateway failed, i.e. the gateway never saw the request. Never on
    # an empty response or a timeout: that POST may already be at a worker, and a second gateway would
    # run (and bill) it again.
    retries 2
    option redispatch 1
    retry-on conn-failure

frontend api
    bind 10.77.0.2:8080
    default_backend gateways

backend gateways
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 250ms fall 2 rise 1
    http-response set-header x-served-by %[srv_name]
    server gw1 10.77.0.11:8080 check
    server gw2 10.77.0.12:8080 check

listen stats
    bind 10.77.0.2:8404
    stats enable
    stats uri /stats
"""


# --- the hosts ---------------------------------------------------------------------------------------------


@dataclass
class Cluster:
    net: Network
    scratch: Path  # directories the unprivileged postgres user must reach (not under pytest's 0700 tmp)
    work: Path
    gateways: dict[str, Service] = field(default_factory=dict)

    def host(self, name: str) -> Host:
        return self.net.hosts[name]

    def state_dir(self, name: str) -> Path:
        return self.work / name / "state"

    def start_gateway(self, name: str, log_name: str = "gateway") -> Service:
        host = self.host(name)
        config = {
            "host": "0.0.0.0", "port": 8080, "state_dir": str(self.state_dir(name)),
            "database_url": DB_URL, "redis_url": REDIS_URL,
            "health_interval_s": 0.25, "recorder_flush_interval_s": 0.05, "recorder_retry_interval_s": 0.5,
            "pools": [
                {"name": "small", "model": "demo-small", "replicas": ["http://10.77.0.20:8001"]},
                {"name": "large", "model": "demo-large", "replicas": ["http://10.77.0.20:8002"]},
            ],
        }
        cfg = self.work / name / "gateway.yaml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env |= {"GATEWAY_KEY_HASH_SECRET": KEY_HASH_SECRET, "GATEWAY_DEV_KEY": DEV_KEY}
        service = host.start(log_name, [str(GATEWAY), "serve", "--config", str(cfg)], env=env, cwd=cfg.parent)
        self.gateways[name] = service
        return service

    def wait_ready(self, name: str) -> None:
        wait_until(f"{name}'s gateway ready", lambda: http_ok(f"http://{self.host(name).address}:8080/readyz"),
                   60, self.gateways[name])


def _start_data(data: Host, scratch: Path) -> None:
    bin_dir = postgres_bin_dir()
    assert bin_dir is not None
    pg = scratch / "pg"
    pg.mkdir()
    owner = pwd.getpwnam("postgres")
    os.chown(pg, owner.pw_uid, owner.pw_gid)
    data.run([str(bin_dir / "initdb"), "-D", str(pg / "data"), "-U", "postgres", "-A", "trust", "-E", "UTF8",
              "--locale=C", "--no-sync"], user="postgres")
    with (pg / "data" / "pg_hba.conf").open("a") as hba:
        hba.write("host all all 10.77.0.0/24 trust\n")
    server = data.start("postgres", [
        str(bin_dir / "postgres"), "-D", str(pg / "data"), "-h", data.address, "-p", "5432", "-k", str(pg),
        "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"], user="postgres")
    admin = "postgresql://postgres@10.77.0.10:5432/postgres"
    wait_until("PostgreSQL on the data host", lambda: postgres_problem(admin) is None, 30, server)
    asyncio.run(_execute(admin, 'CREATE DATABASE "gateway"'))
    redis_dir = scratch / "redis"
    redis_dir.mkdir()
    redis = data.start("redis", [shutil.which("redis-server") or "redis-server", "--bind", data.address,
                                 "--port", "6379", "--protected-mode", "no", "--save", "", "--appendonly", "no",
                                 "--dir", str(redis_dir)])
    wait_until("Redis on the data host", lambda: redis_problem(REDIS_URL) is None, 30, redis)


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _start_workers(workers: Host) -> None:
    for model, port, extra in (("demo-small", 8001, []), ("demo-large", 8002, ["--max-model-len", "8192"])):
        sim = workers.start(model, [str(GATEWAY), "sim", "--model", model, "--host", workers.address, "--port",
                                    str(port), "--ttft-ms", "20", "--output-token-ms", "10", *extra])
        wait_until(f"{model} on the workers host", functools.partial(http_ok, f"http://{workers.address}:{port}/health"),
                   30, sim)


def _migrate(work: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    done = _run([str(GATEWAY), "db", "--database-url", DB_URL, "upgrade"], env, work)
    assert done.returncode == 0, f"gateway db upgrade:\n{done.stdout}{done.stderr}"


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, check=False, timeout=60)


def server_states() -> dict[str, str]:
    """HAProxy's view of the gateways: server name -> UP, DOWN, ..."""
    text = httpx.get(STATS_URL, timeout=2, trust_env=False).text.lstrip("# ")
    return {row["svname"]: row["status"] for row in csv.DictReader(io.StringIO(text))
            if row["pxname"] == "gateways" and row["svname"] in ("gw1", "gw2")}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    require(["ip", "haproxy", "redis-server", "runuser"], users=["postgres"])
    if postgres_bin_dir() is None:
        raise RuntimeError("the multi-host test needs PostgreSQL's initdb and postgres (apt-get install postgresql)")
    failed_before = request.session.testsfailed
    with machine_lock():
        remove_stale()
        work = tmp_path_factory.mktemp("multihost")
        scratch = Path(tempfile.mkdtemp(prefix=f"{PREFIX}scratch-"))
        os.chmod(scratch, 0o755)
        net = Network(work)
        c = Cluster(net, scratch, work)
        try:
            net.up()
            for name, octet in (("lb", 2), ("data", 10), ("gw1", 11), ("gw2", 12), ("workers", 20)):
                net.add(name, octet)
            _start_data(c.host("data"), scratch)
            _start_workers(c.host("workers"))
            _migrate(work)
            for name in ("gw1", "gw2"):
                c.start_gateway(name)
            for name in ("gw1", "gw2"):
                c.wait_ready(name)
            (work / "haproxy.cfg").write_text(HAPROXY_CFG)
            lb = c.host("lb").start("haproxy", ["haproxy", "-db", "-f", str(work / "haproxy.cfg")])
            wait_until("HAProxy sees both gateways UP", lambda: server_states() == {"gw1": "UP", "gw2": "UP"},
                       15, lb)
        except BaseException:
            _report(request, f"multi-host logs ({work}):\n{net.tails(20)}")
            _tear_down(net, scratch)
            raise
        try:
            yield c
        finally:
            if request.session.testsfailed > failed_before:
                _report(request, f"multi-host logs ({work}):\n{net.tails(20)}")
            _tear_down(net, scratch)


def _tear_down(net: Network, scratch: Path) -> None:
    net.down()
    shutil.rmtree(scratch, ignore_errors=True)


def _report(request: pytest.FixtureRequest, text: str) -> None:
    """To the terminal, past pytest's capture (a fixture's teardown output is otherwise dropped)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\n" + text)
    else:
        print(text, file=sys.stderr)


# --- the load ----------------------------------------------------------------------------------------------


@dataclass
class Call:
    """One call as its client saw it."""

    rid: str  # the x-request-id the client sent
    key: str  # "budget" or "plain"
    stream: bool
    started: float  # monotonic
    ended: float = 0.0
    status: int | None = None
    echoed_rid: str | None = None  # the response's x-request-id: set by a gateway, absent from HAProxy's own errors
    served_by: str | None = None  # HAProxy's x-served-by
    complete: bool = False  # the whole body received (a stream up to `data: [DONE]`)
    code: str | None = None  # an error body's code
    transport_error: str | None = None

    @property
    def from_gateway(self) -> bool:
        return self.echoed_rid == self.rid

    @property
    def answered(self) -> bool:
        return self.status == 200 and self.complete and self.from_gateway

    @property
    def refused(self) -> bool:
        return self.status is not None and 400 <= self.status < 500 and self.from_gateway

    @property
    def failed(self) -> bool:
        """Neither answered nor refused by a gateway: cut mid-way, or an error the balancer made."""
        return not (self.answered or self.refused)


def _body(i: int) -> tuple[str, dict[str, Any]]:
    stream = i % 2 == 0
    if i % 4 < 2:
        return "/v1/chat/completions", {
            "model": "auto", "stream": stream, "max_tokens": 16,
            "messages": [{"role": "user", "content": f"Say hello number {i}."}]}
    return "/v1/completions", {"model": "demo-small", "stream": stream, "max_tokens": 16, "prompt": f"Count to {i}:"}


async def _call(client: httpx.AsyncClient, key_name: str, key: str, i: int, calls: list[Call]) -> None:
    path, body = _body(i)
    call = Call(f"mh-{uuid.uuid4().hex}", key_name, bool(body["stream"]), time.monotonic())
    calls.append(call)
    headers = {"authorization": f"Bearer {key}", "x-request-id": call.rid}
    try:
        async with client.stream("POST", path, json=body, headers=headers) as response:
            call.status = response.status_code
            call.echoed_rid = response.headers.get("x-request-id")
            call.served_by = response.headers.get("x-served-by")
            data = await response.aread()
    except httpx.TransportError as exc:
        call.transport_error = type(exc).__name__
        return
    finally:
        call.ended = time.monotonic()
    if call.status == 200:
        call.complete = data.rstrip().endswith(b"data: [DONE]") if call.stream else "choices" in json.loads(data)
    else:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            call.code = json.loads(data)["error"]["code"]


async def _load(keys: dict[str, str], calls: list[Call], stop: asyncio.Event) -> None:
    counter = itertools.count()
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=LB_URL, timeout=httpx.Timeout(20, connect=2), limits=limits,
                                 trust_env=False) as client:
        async def worker() -> None:
            while not stop.is_set():
                i = next(counter)
                name = "budget" if i % 3 == 0 else "plain"
                await _call(client, name, keys[name], i, calls)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


@dataclass
class Run:
    """What the scenario did and what the database holds afterwards."""

    calls: list[Call]
    key_ids: dict[str, str]
    killed_at: float  # monotonic
    down_after_s: float | None  # how long HAProxy took to mark gw1 DOWN
    dead_journal: list[str]  # gw1's spool files right after the kill
    records: list[asyncpg.Record]
    logs: dict[str, str]  # access-log text of each gateway host, both of gw1's lives included


def _admin(path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(LB_URL + path, json=body, headers={"authorization": f"Bearer {DEV_KEY}"}, timeout=10,
                   trust_env=False)
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


async def _scenario(c: Cluster, keys: dict[str, str]) -> tuple[list[Call], float, float | None, list[str]]:
    calls: list[Call] = []
    stop = asyncio.Event()
    load = asyncio.create_task(_load(keys, calls, stop))
    await asyncio.sleep(KILL_AT_S)
    c.host("gw1").kill()
    killed_at = time.monotonic()
    dead_journal = sorted(p.name for p in (c.state_dir("gw1") / "spool").iterdir())
    down_after: float | None = None
    started = killed_at - KILL_AT_S

    def budget_ran_out() -> bool:
        return any(call.key == "budget" and call.refused for call in calls)

    while (elapsed := time.monotonic() - started) < LOAD_S or (not budget_ran_out() and elapsed < LOAD_MAX_S):
        if down_after is None and (await asyncio.to_thread(server_states)).get("gw1", "").startswith("DOWN"):
            down_after = time.monotonic() - killed_at
        await asyncio.sleep(0.05)
    stop.set()
    await load
    return calls, killed_at, down_after, dead_journal


async def _settled_records(c: Cluster, dead_journal: list[str], expected: set[str]) -> list[asyncpg.Record]:
    """The records, once gw1's dead journal is replayed and every call a gateway answered or refused is in."""
    spool = c.state_dir("gw1") / "spool"
    conn = await asyncpg.connect(PG_DSN, timeout=10)
    try:
        deadline = time.monotonic() + 30
        while True:
            records: list[asyncpg.Record] = await conn.fetch("SELECT * FROM usage_records")
            left = [name for name in dead_journal if (spool / name).exists()]
            missing = expected - {r["client_request_id"] for r in records}
            if not left and not missing:
                return records
            if time.monotonic() > deadline:
                raise AssertionError(f"after 30 s, gw1's dead journal files not replayed: {left}; calls a gateway "
                                     f"answered without a record: {sorted(missing)[:10]} ({len(missing)})")
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def run(cluster: Cluster) -> Run:
    budget_key = _admin("/admin/keys", {"tenant": "acme", "team": "search", "role": "app", "name": "budget",
                                        "budget": str(BUDGET), "budget_period": "total"})
    plain_key = _admin("/admin/keys", {"tenant": "acme", "team": "batch", "role": "app", "name": "plain"})
    keys = {"budget": budget_key["key"], "plain": plain_key["key"]}
    calls, killed_at, down_after, dead_journal = asyncio.run(_scenario(cluster, keys))
    cluster.start_gateway("gw1", "gateway-restarted")
    cluster.wait_ready("gw1")
    wait_until("HAProxy sees gw1 UP again", lambda: server_states().get("gw1") == "UP", 10)
    expected = {call.rid for call in calls if call.answered or call.refused}
    records = asyncio.run(_settled_records(cluster, dead_journal, expected))
    spend = sum((r["cost"] for r in records if r["key_id"] == budget_key["id"]), Decimal(0))
    statuses = collections.Counter(r["status"] for r in records)
    ran_out = min((c.started for c in calls if c.key == "budget" and c.refused), default=None)
    print(f"calls: {sum(c.answered for c in calls)} answered, {sum(c.refused for c in calls)} refused, "
          f"{sum(c.failed for c in calls)} failed; gw1 DOWN {down_after} s after the kill; records by status: "
          f"{dict(statuses)}; budget {BUDGET}, spent {spend}, first refused "
          f"{None if ran_out is None else round(ran_out - killed_at, 2)} s after the kill")
    logs = {name: "".join(p.read_text(errors="replace") for p in cluster.work.glob(f"{name}-gateway*.log"))
            for name in ("gw1", "gw2")}
    return Run(calls, {"budget": budget_key["id"], "plain": plain_key["id"]}, killed_at, down_after,
               dead_journal, records, logs)


def _served_in_log(log: str) -> set[str]:
    return set(re.findall(r"gateway\.access: request_id=(\S+)", log))


# --- the checks --------------------------------------------------------------------------------------------


def test_a_crashed_runs_leftovers_are_removed(tmp_path: Path) -> None:
    """What a run killed outright leaves (a namespace with a live process, its veth, the bridge, scratch) does not
    stop the next. First in the module: it runs before the hosts are built."""
    require(["ip"])
    with machine_lock():
        remove_stale()
        net = Network(tmp_path)
        net.up()
        host = net.add("gw1", 11)
        sleeper = host.start("sleeper", ["sleep", "600"])
        Path(tempfile.mkdtemp(prefix=f"{PREFIX}scratch-")).joinpath("file").write_text("left")
        remove_stale()
        sleeper.reap()
        assert sleeper.process.returncode == -9
        assert [ns for ns in namespaces() if ns.startswith(PREFIX)] == []
        assert [link for link in links() if link.startswith(PREFIX)] == []
        assert list(Path(tempfile.gettempdir()).glob(f"{PREFIX}scratch-*")) == []


def test_the_balancer_moves_traffic_to_gw2(run: Run) -> None:
    before = [c for c in run.calls if c.started < run.killed_at]
    after = [c for c in run.calls if c.started >= run.killed_at + DETECTION_S]
    assert {c.served_by for c in before if c.answered} == {"gw1", "gw2"}, "both gateways served before the kill"
    assert run.down_after_s is not None and run.down_after_s < DETECTION_S, \
        f"HAProxy marked gw1 DOWN after {run.down_after_s} s"
    # The kill cut calls that gw1 had in flight: the case the records below are about.
    cut = [c for c in run.calls if c.failed]
    assert cut, "no call was in flight on gw1 when it was killed"
    assert all(c.started < run.killed_at + DETECTION_S for c in cut), [vars(c) for c in cut]
    assert len(after) > 50, len(after)
    assert [vars(c) for c in after if c.failed] == []
    assert {c.served_by for c in after} == {"gw2"}
    # HAProxy's header agrees with the gateways' own access lines (written as the record is built, after the
    # last byte: gw1's last calls before the kill have none).
    for call in run.calls:
        if (call.answered or call.refused) and (call.served_by == "gw2" or call.ended < run.killed_at - 0.5):
            assert call.served_by is not None
            assert call.rid in _served_in_log(run.logs[call.served_by]), vars(call)


def test_every_answered_call_has_exactly_one_record(run: Run) -> None:
    by_call: dict[str, list[asyncpg.Record]] = {}
    for r in run.records:
        by_call.setdefault(r["client_request_id"], []).append(r)
    sent = {c.rid: c for c in run.calls}
    # No record without a call: every record names a call the client sent, and none is counted twice.
    assert set(by_call) <= set(sent), sorted(set(by_call) - set(sent))[:10]
    assert {rid: len(rs) for rid, rs in by_call.items() if len(rs) > 1} == {}
    for rid, call in sent.items():
        records = by_call.get(rid, [])
        if call.answered:
            assert [(r["status"], r["http_status"]) for r in records] == [("ok", 200)], vars(call)
        elif call.refused:
            assert [(r["status"], r["http_status"]) for r in records] == [("rejected", call.status)], vars(call)
        else:
            # Cut by the kill, or a 502 the balancer made for it: no record when gw1 died before sending it to a
            # worker; else one, `incomplete` when the worker still had it, or the outcome gw1 had journaled when
            # the answer's last byte was lost on the way.
            assert len(records) <= 1, vars(call)
    # Only gw1's replay makes incomplete records, and only for calls no gateway answered.
    incomplete = {r["client_request_id"] for r in run.records if r["status"] == "incomplete"}
    assert all(sent[rid].failed for rid in incomplete)
    assert run.dead_journal, "gw1 left no journal to replay"


def test_the_budget_is_never_overspent(run: Run) -> None:
    budget_records = [r for r in run.records if r["key_id"] == run.key_ids["budget"]]
    spend = sum((r["cost"] for r in budget_records), Decimal(0))
    assert isinstance(spend, Decimal)
    assert Decimal(0) < spend <= BUDGET, spend
    refused = [c for c in run.calls if c.key == "budget" and c.refused]
    assert refused and {c.code for c in refused} == {"insufficient_quota"}, [vars(c) for c in refused[:3]]
    # It ran out on gw2 after gw1 had spent part of it: both hosts drew on the one budget.
    assert {c.served_by for c in run.calls if c.key == "budget" and c.answered} == {"gw1", "gw2"}
    assert all(c.served_by == "gw2" for c in refused if c.started >= run.killed_at + DETECTION_S)


def test_the_cache_is_shared_between_hosts(run: Run, cluster: Cluster) -> None:
    body = {"model": "auto", "temperature": 0, "max_tokens": 8,
            "messages": [{"role": "user", "content": f"What is the capital of France? ({uuid.uuid4().hex})"}]}
    answers = []
    for host in ("gw1", "gw2"):
        rid = f"cache-{host}-{uuid.uuid4().hex}"
        r = httpx.post(f"http://{cluster.host(host).address}:8080/v1/chat/completions", json=body, timeout=10,
                       headers={"authorization": f"Bearer {DEV_KEY}", "x-request-id": rid}, trust_env=False)
        assert r.status_code == 200, r.text
        answers.append((rid, r.headers["x-gateway-cache"], r.json()["choices"][0]["message"]["content"]))
    (rid1, cache1, text1), (rid2, cache2, text2) = answers
    assert (cache1, cache2) == ("miss", "hit")
    assert text1 == text2

    async def recorded() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(PG_DSN, timeout=10)
        try:
            deadline = time.monotonic() + 10
            while True:
                rows: list[asyncpg.Record] = await conn.fetch(
                    "SELECT client_request_id, cache_hit, cost FROM usage_records "
                    "WHERE client_request_id = ANY($1::text[]) ORDER BY received_at", [rid1, rid2])
                if len(rows) == 2 or time.monotonic() > deadline:
                    return rows
                await asyncio.sleep(0.1)
        finally:
            await conn.close()

    rows = asyncio.run(recorded())
    assert [(r["client_request_id"], r["cache_hit"]) for r in rows] == [(rid1, False), (rid2, True)]
    assert rows[0]["cost"] > 0 and rows[1]["cost"] == 0


def test_the_restarted_host_takes_calls_again(run: Run) -> None:
    served = []
    with httpx.Client(base_url=LB_URL, timeout=10, trust_env=False) as client:
        for i in range(6):
            r = client.post("/v1/completions", json={"model": "demo-small", "max_tokens": 4, "prompt": f"again {i}"},
                            headers={"authorization": f"Bearer {DEV_KEY}"})
            assert r.status_code == 200, r.text
            served.append(r.headers["x-served-by"])
    assert set(served) == {"gw1", "gw2"}, served
