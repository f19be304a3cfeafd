"""`gateway router train --from-db [--install-if-better]` through the real CLI, on a fresh real PostgreSQL
database per test (one test on the embedded SQLite): outcome rows written with the store's own API, their
vectors computed from prompts with a planted signal (a marker word makes demo-small fail and demo-large
succeed; elsewhere both succeed). The prompts exist only here: the table holds vectors."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, update
from sqlalchemy.engine import make_url

from gateway.accounting import db
from gateway.cli import main
from gateway.learning import compare, production
from gateway.learning.metrics import apgr, pgr_curve
from gateway.learning.store import OUTCOMES, OutcomeRow, upsert_outcome
from router import features
from router.policy import default_policy_dir, load_policy_set
from router.predictor import parse_predictor, prior
from tests.pg_support import create_pg_database, drop_pg_database

SMALL, LARGE = "demo-small", "demo-large"
MODELS = f"{SMALL},{LARGE}"
EASY = ("hello", "weather", "recipe", "garden", "holiday", "music", "friend", "coffee", "story", "movie", "travel")
HARD = ("eigenvalue", "homology", "manifold")
OTHER_LAYOUT = "bytes4x512+d20/0"
PASSWORD = "s3cret-Pw"


# --- the database and the rows --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_gateway_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the test's --config only."""
    import os

    for name in list(os.environ):
        if name.startswith("GATEWAY_"):
            monkeypatch.delenv(name)


@pytest.fixture
async def pg() -> AsyncIterator[str]:
    """A fresh, migrated PostgreSQL database; its URL with a password the server (trust) ignores."""
    url = await create_pg_database()
    engine = db.create_engine(url)
    try:
        await db.upgrade(engine)
    finally:
        await engine.dispose()
    yield make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)
    await drop_pg_database(url)


def config(tmp_path: Path, url: str | None = None, **settings: Any) -> str:
    """A gateway settings file: this database (none: the embedded SQLite in state_dir)."""
    path = tmp_path / "gateway.yaml"
    values = {"state_dir": str(tmp_path / "state"), **settings}
    if url is not None:
        values["database_url"] = url
    path.write_text(json.dumps(values))  # JSON is YAML
    return str(path)


def vector_of(text: str) -> features.Vector:
    return features.vector_of_text(text, prompt_chars=len(text), prompt_tokens=len(text) // 4, messages=1, turns=1,
                                   system=False, tools=False, structured_output=False, max_tokens=None,
                                   completion=False)


def planted(n: int, seed: int = 7, prefix: str = "req") -> list[tuple[str, features.Vector, dict[str, float]]]:
    """(request id, vector, model -> score): a marker word makes demo-small score 0, demo-large 1."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        hard = rng.random() < 0.3
        words = [rng.choice(EASY) for _ in range(rng.randint(4, 30))]
        if hard:
            words.insert(rng.randrange(len(words)), rng.choice(HARD))
        scores = {SMALL: 0.0 if hard else 1.0, LARGE: 1.0}
        out.append((f"{prefix}-{seed}-{i:04d}", vector_of(" ".join(words)), scores))
    return out


def noise(rows: list[tuple[str, features.Vector, dict[str, float]]],
          seed: int = 3) -> list[tuple[str, features.Vector, dict[str, float]]]:
    """The same requests with random scores."""
    rng = random.Random(seed)
    return [(rid, v, {SMALL: rng.choice((0.0, 1.0)), LARGE: rng.choice((0.0, 1.0))}) for rid, v, _ in rows]


def outcome(rid: str, model: str, score: float, vector: features.Vector, source: str = "feedback",
            layout: str = features.FEATURES) -> OutcomeRow:
    blob = features.encode_vector(vector) if layout == features.FEATURES else b"\x00" * 64
    return OutcomeRow(request_id=rid, tenant="acme", team=None, key_id=None, model=model, score=score, label=None,
                      source=source, judge="exact" if source == "shadow" else None,  # type: ignore[arg-type]
                      feature_layout=layout, features=blob, predictor=None)


async def store(url: str, rows: list[OutcomeRow], age: timedelta | None = None) -> None:
    """Write the rows with the store's API; `age`: then date them that long ago."""
    engine = db.create_engine(url)
    try:
        for row in rows:
            await upsert_outcome(engine, row)
        if age is not None:
            async with engine.begin() as conn:
                await conn.execute(update(OUTCOMES).where(OUTCOMES.c.request_id.in_([r.request_id for r in rows]))
                                   .values(created_at=datetime.now(UTC) - age))
    finally:
        await engine.dispose()


def put(url: str, requests: list[tuple[str, features.Vector, dict[str, float]]], age: timedelta | None = None,
        source: str = "feedback") -> None:
    asyncio.run(store(url, [outcome(rid, m, s, v, source) for rid, v, scores in requests for m, s in scores.items()],
                      age))


def wipe(url: str) -> None:
    async def run() -> None:
        engine = db.create_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(delete(OUTCOMES))
        finally:
            await engine.dispose()

    asyncio.run(run())


def train(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["router", "train", "--from-db", "--models", MODELS, *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def artefact(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "predictor.json").read_bytes())
    return data


def held_out_apgr(predictor_dir: Path, requests: list[tuple[str, features.Vector, dict[str, float]]],
                  holdout: float, seed: int) -> float:
    """APGR of routing demo-small -> demo-large by the predictor on the requests a split held out."""
    predictor, _ = parse_predictor((predictor_dir / "predictor.json").read_bytes())
    assert predictor is not None
    held = [r for r in requests if production.request_in_holdout(r[0], holdout, seed)]
    p = predictor.predict_many(features.stack([v for _, v, _ in held]))
    gap = p[:, predictor.index[LARGE]] - p[:, predictor.index[SMALL]]
    return apgr(pgr_curve(gap, [s[SMALL] for _, _, s in held], [s[LARGE] for _, _, s in held]))


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """A copy of the shipped policy whose predictor is an untrained prior (0.5 for every request)."""
    folder = tmp_path / "policies"
    shutil.copytree(default_policy_dir(), folder, ignore=shutil.ignore_patterns("tests", "training"))
    (folder / "predictor" / "predictor.json").write_bytes(prior([SMALL, LARGE]))
    return folder


# --- training from the database -------------------------------------------------------------------------------


def test_from_db_learns_the_planted_signal(pg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    requests = planted(240)
    put(pg, requests)
    cfg = config(tmp_path, pg)
    outs = []
    for name in ("a", "b"):
        code, out, err = train(capsys, "--config", cfg, "--out", str(tmp_path / name), "--holdout", "0.3",
                               "--seed", "5")
        assert code == 0, err
        outs.append(out)
    assert (tmp_path / "a" / "predictor.json").read_bytes() == (tmp_path / "b" / "predictor.json").read_bytes()
    assert "read 480 outcome rows of 240 requests" in outs[0]
    assert PASSWORD not in outs[0] and "postgres@" not in outs[0]
    assert held_out_apgr(tmp_path / "a", requests, 0.3, 5) > 0.8
    training = artefact(tmp_path / "a")["training"]
    assert training["source"] == "db"
    database = training["db"]
    assert (database["rows"], database["requests"], database["since"]) == (480, 240, None)
    assert database["url"] == f"postgresql://127.0.0.1:5432/{make_url(pg).database}"
    assert PASSWORD not in json.dumps(training) and "postgres@" not in json.dumps(training)
    assert (training["seed"], training["holdout"], training["data"]) == (5, 0.3, [])
    held = sum(production.request_in_holdout(r[0], 0.3, 5) for r in requests)
    assert 0 < held < 240 and training["rows"] == 240 - held
    assert training["models"] == {SMALL: [SMALL], LARGE: [LARGE]}


def test_feedback_and_shadow_scores_of_a_model_are_averaged(pg: str, tmp_path: Path) -> None:
    (request,) = planted(1)
    rid, vector, _ = request
    asyncio.run(store(pg, [outcome(rid, SMALL, 1.0, vector, "feedback"), outcome(rid, SMALL, 0.0, vector, "shadow"),
                           outcome(rid, LARGE, 0.8, vector, "shadow")]))
    found = production.read_production(pg, None)
    assert found.request_ids == [rid] and found.rows == 3
    assert found.outcomes == [{SMALL: 0.5, LARGE: 0.8}]
    assert (found.vectors[0] == vector).all()


def test_files_add_their_rows(pg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    put(pg, planted(60))
    data = tmp_path / "public.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "messages": [{"role": "user", "content": f"tell me {w}"}],
                                        "outcomes": {"s7b": 1.0, "l70b": 1.0}}) + "\n"
                            for i, w in enumerate(EASY * 3)))
    code, out, err = main(["router", "train", "--from-db", "--config", config(tmp_path, pg), "--data", str(data),
                           "--models", f"{SMALL}={SMALL}|s7b,{LARGE}={LARGE}|l70b", "--out",
                           str(tmp_path / "p")]), *capsys.readouterr()
    assert code == 0, err
    assert f"trained on {60 + len(EASY) * 3} of {60 + len(EASY) * 3} rows" in out
    training = artefact(tmp_path / "p")["training"]
    assert training["data"][0]["name"] == "public.jsonl" and training["db"]["requests"] == 60
    assert training["models"] == {SMALL: [SMALL, "s7b"], LARGE: [LARGE, "l70b"]}


def test_since_keeps_the_rows_scored_within_the_window(pg: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    recent, old = planted(50, seed=1), planted(40, seed=2)
    put(pg, recent, age=timedelta(days=2))
    put(pg, old, age=timedelta(days=45))
    cfg = config(tmp_path, pg)
    code, out, err = train(capsys, "--config", cfg, "--since", "30d", "--out", str(tmp_path / "p"))
    assert code == 0, err
    assert "read 100 outcome rows of 50 requests" in out and "scored within 30d" in out
    assert artefact(tmp_path / "p")["training"]["db"] == {
        "url": production.public_url(pg), "since": "30d", "rows": 100, "requests": 50}
    code, out, err = train(capsys, "--config", cfg, "--out", str(tmp_path / "all"))
    assert code == 0 and "read 180 outcome rows of 90 requests" in out
    code, out, err = train(capsys, "--config", cfg, "--since", "36h", "--out", str(tmp_path / "none"))
    assert code == 1 and out == ""
    assert err.splitlines() == [
        f"gateway router train: no routing outcomes scored within 36h in {production.public_url(pg)} in this "
        "gateway's feature layout: nothing to train on"]
    for bad in ("30", "d", "0h", "-3d", "1y"):
        code, _, err = train(capsys, "--config", cfg, f"--since={bad}", "--out", str(tmp_path / "x"))
        assert code == 1 and len(err.strip().splitlines()) == 1 and "--since" in err, bad
    assert not (tmp_path / "x").exists() and not (tmp_path / "none").exists()


def test_rows_of_another_feature_layout_are_skipped_and_counted(pg: str, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    put(pg, planted(40))
    stale = [outcome(f"stale-{i}", m, 1.0, vector_of("x"), layout=OTHER_LAYOUT) for i in range(7) for m in (SMALL,
                                                                                                            LARGE)]
    asyncio.run(store(pg, stale))
    code, out, err = train(capsys, "--config", config(tmp_path, pg), "--out", str(tmp_path / "p"))
    assert code == 0, err
    assert "read 80 outcome rows of 40 requests" in out
    assert f"skipped 14 outcome rows of another feature layout ({OTHER_LAYOUT}: 14)" in out
    assert artefact(tmp_path / "p")["training"]["db"]["rows"] == 80


def test_too_few_scored_requests_are_refused(pg: str, tmp_path: Path, policies: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    few = planted(production.MIN_SCORED - 1)
    put(pg, few)
    before = (policies / "predictor" / "predictor.json").read_bytes()
    code, out, err = train(capsys, "--config", config(tmp_path, pg), "--out", str(tmp_path / "p"),
                           "--install-if-better", "--policies", str(policies))
    assert code == 1 and "read 38 outcome rows of 19 requests" in out
    assert f"model `{SMALL}` is scored on {production.MIN_SCORED - 1} row(s)" in err
    assert f"at least {production.MIN_SCORED} per model" in err
    assert (policies / "predictor" / "predictor.json").read_bytes() == before
    assert not (tmp_path / "p").exists()


# --- installing --------------------------------------------------------------------------------------------------


def test_install_if_better_replaces_a_prior(pg: str, tmp_path: Path, policies: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    put(pg, planted(240))
    target = policies / "predictor" / "predictor.json"
    old = load_policy_set(policies)
    code, out, err = train(capsys, "--config", config(tmp_path, pg), "--out", str(tmp_path / "p"),
                           "--install-if-better", "--policies", str(policies))
    assert code == 0, err
    installed = target.read_bytes()
    assert installed == (tmp_path / "p" / "predictor.json").read_bytes()
    new_hash = hashlib.sha256(installed).hexdigest()
    assert "APGR routing demo-small -> demo-large on" in out and "current 0.5000" in out
    assert f"installed predictor {new_hash[:12]}" in out
    policy = load_policy_set(policies)
    assert policy.predictor is not None and policy.predictor.hash == new_hash and policy.hash != old.hash
    training = json.loads(installed)["training"]
    assert training["holdout"] == 0.0 and training["rows"] == 240  # retrained on every row
    selected = training["selected"]
    assert selected["measure"] == "apgr" and selected["current"] == 0.5 and selected["new"] > 0.8
    assert selected["against"] == old.predictor.hash and selected["holdout"] == 0.3  # type: ignore[union-attr]
    assert sorted(p.name for p in target.parent.iterdir()) == ["predictor.json"]  # no temporary file left


def test_no_install_when_the_current_predictor_is_better(pg: str, tmp_path: Path, policies: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    requests = planted(240)
    cfg = config(tmp_path, pg)
    put(pg, requests)
    code, _, err = train(capsys, "--config", cfg, "--out", str(tmp_path / "good"), "--install-if-better",
                         "--policies", str(policies))
    assert code == 0, err
    good = (policies / "predictor" / "predictor.json").read_bytes()
    # Now the requests a split with seed 0 trains on carry noise; the held-out ones still the signal.
    wipe(pg)
    put(pg, [n if not production.request_in_holdout(n[0], 0.3, 0) else r
             for r, n in zip(requests, noise(requests), strict=True)])
    code, out, err = train(capsys, "--config", cfg, "--out", str(tmp_path / "noisy"), "--install-if-better",
                           "--policies", str(policies))
    assert code == 0, err
    assert "decision: keep" in out and "short of the margin of +0.005" in out and "is unchanged" in out
    assert (policies / "predictor" / "predictor.json").read_bytes() == good
    noisy = artefact(tmp_path / "noisy")  # written anyway: the one compared, trained without the held-out rows
    assert noisy["training"]["holdout"] == 0.3 and "selected" not in noisy["training"]


def test_mse_decides_when_the_current_predictor_lacks_a_head(pg: str, tmp_path: Path, policies: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    (policies / "predictor" / "predictor.json").write_bytes(prior([SMALL, "retired"]))
    (policies / "routing.yaml").write_text((policies / "routing.yaml").read_text().replace(
        "route: cheapest_above", "route: {cheapest_above: {candidates: [demo-small]}}"))
    load_policy_set(policies)
    put(pg, planted(240))
    code, out, err = train(capsys, "--config", config(tmp_path, pg), "--out", str(tmp_path / "p"),
                           "--install-if-better", "--policies", str(policies))
    assert code == 0, err
    assert "MSE of the predicted scores over" in out and "the current predictor has no head `demo-large`" in out
    assert "installed predictor" in out
    assert load_policy_set(policies).predictor.heads == (LARGE, SMALL)  # type: ignore[union-attr]


def test_a_predictor_the_policy_would_refuse_is_not_installed(pg: str, tmp_path: Path, policies: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    put(pg, planted(240))
    before = (policies / "predictor" / "predictor.json").read_bytes()
    code, out, err = main(["router", "train", "--from-db", "--config", config(tmp_path, pg), "--models",
                           f"{SMALL},big={LARGE}", "--out", str(tmp_path / "p"), "--install-if-better",
                           "--policies", str(policies)]), *capsys.readouterr()
    assert code == 1 and "installed" not in out
    assert "would refuse the new predictor" in err and "candidate `demo-large` has no head" in err
    assert (policies / "predictor" / "predictor.json").read_bytes() == before


def test_a_policy_without_a_predictor_is_refused(pg: str, tmp_path: Path, policies: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (policies / "routing.yaml").write_text("defaults:\n  reference_model: demo-large\nrules:\n"
                                           "  - name: all\n    route: smallest_capable\n")
    put(pg, planted(40))
    code, out, err = train(capsys, "--config", config(tmp_path, pg), "--out", str(tmp_path / "p"),
                           "--install-if-better", "--policies", str(policies))
    assert code == 1 and out == ""
    assert err.splitlines() == [f"gateway router train: the policy in {policies} has no `defaults.predictor` in "
                                "routing.yaml: there is no predictor to compare with or replace (set it, e.g. "
                                "`predictor: predictor`, and put a predictor there)"]


def test_policies_dir_comes_from_the_settings(pg: str, tmp_path: Path, policies: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    put(pg, planted(240))
    cfg = config(tmp_path, pg, policies_dir=str(policies))
    code, out, err = train(capsys, "--config", cfg, "--out", str(policies / "predictor"), "--install-if-better")
    assert code == 1 and out == "" and "is the policy's predictor directory" in err
    code, out, err = train(capsys, "--config", cfg, "--out", str(tmp_path / "p"), "--install-if-better")
    assert code == 0, err
    assert str(policies / "predictor" / "predictor.json") in out
    assert (policies / "predictor" / "predictor.json").read_bytes() == (tmp_path / "p" / "predictor.json").read_bytes()


# --- SQLite, errors ------------------------------------------------------------------------------------------


def test_the_embedded_sqlite_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path)  # no database_url: <state_dir>/gateway.db
    code, out, err = train(capsys, "--config", cfg, "--out", str(tmp_path / "p"))
    assert code == 1 and err.splitlines() == [
        f"gateway router train: no gateway database at {(tmp_path / 'state' / 'gateway.db').resolve()} (start the "
        "gateway with `gateway serve`, or run `gateway db upgrade`)"]
    assert not (tmp_path / "state" / "gateway.db").exists()
    url = db.embedded_url(tmp_path / "state")

    async def migrate() -> None:
        engine = db.create_engine(url)
        try:
            await db.upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(migrate())
    requests = planted(240)
    put(url, requests[:200], age=timedelta(days=10))
    put(url, requests[200:])
    code, out, err = train(capsys, "--config", cfg, "--out", str(tmp_path / "p"), "--since", "2d")
    assert code == 0, err
    assert "read 80 outcome rows of 40 requests" in out
    code, out, err = train(capsys, "--config", cfg, "--out", str(tmp_path / "p"), "--holdout", "0.3")
    assert code == 0, err
    assert held_out_apgr(tmp_path / "p", requests, 0.3, 0) > 0.8
    assert artefact(tmp_path / "p")["training"]["db"]["url"] == f"sqlite:///{(tmp_path / 'state' / 'gateway.db')}"


def test_database_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = train(capsys, "--config", config(tmp_path, f"postgresql://u:{PASSWORD}@127.0.0.1:1/nowhere"),
                           "--out", str(tmp_path / "p"))
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert "cannot reach the database postgresql://127.0.0.1:1/nowhere" in err and PASSWORD not in err

    url = asyncio.run(create_pg_database())  # not migrated
    try:
        code, out, err = train(capsys, "--config", config(tmp_path, url), "--out", str(tmp_path / "p"))
    finally:
        asyncio.run(drop_pg_database(url))
    assert code == 1 and len(err.splitlines()) == 1
    assert "has no routing_outcomes table: it is not migrated; run `gateway db upgrade`" in err
    assert not (tmp_path / "p").exists()


def test_empty_table_and_flag_misuse(pg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = train(capsys, "--config", config(tmp_path, pg), "--out", str(tmp_path / "p"))
    assert code == 1 and out == "" and err.splitlines() == [
        f"gateway router train: no routing outcomes in {production.public_url(pg)} in this gateway's feature "
        "layout: nothing to train on"]
    for argv, message in ((["--since", "3d"], "--since goes with --from-db"),
                          (["--install-if-better"], "--install-if-better goes with --from-db"),
                          ([], "give outcome files (--data FILE) or --from-db (the gateway's routing outcomes)")):
        code = main(["router", "train", "--models", MODELS, "--out", str(tmp_path / "p"), *argv])
        _, err = capsys.readouterr()
        assert code == 1 and err.splitlines() == [f"gateway router train: {message}"]
    code, _, err = train(capsys, "--config", config(tmp_path, pg), "--out", str(tmp_path / "p"),
                         "--install-if-better", "--holdout", "0")
    assert code == 1 and "--holdout must be above 0" in err


# --- units ----------------------------------------------------------------------------------------------------


def test_public_url_has_no_credentials() -> None:
    assert production.public_url(f"postgresql+asyncpg://gw:{PASSWORD}@db.internal:6432/gateway?ssl=require"
                                 f"&password={PASSWORD}") == "postgresql://db.internal:6432/gateway"
    assert production.public_url("sqlite+aiosqlite:////var/lib/gw/gateway.db") == "sqlite:////var/lib/gw/gateway.db"


def test_the_holdout_by_request_id_is_stable_and_near_the_share() -> None:
    ids = [f"r{i}" for i in range(4000)]
    held = [production.request_in_holdout(r, 0.3, 1) for r in ids]
    assert held == [production.request_in_holdout(r, 0.3, 1) for r in ids]
    assert 0.27 < sum(held) / len(ids) < 0.33
    assert held != [production.request_in_holdout(r, 0.3, 2) for r in ids]
    assert not any(production.request_in_holdout(r, 0.0, 1) for r in ids)


def test_the_help_states_the_constants(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["router", "train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"APGR higher by at least {compare.APGR_MARGIN}" in text
    assert f"MSE at least {compare.MSE_MARGIN:.0%} lower" in text
    assert f"fewer than {compare.MIN_HELD_OUT} held-out rows" in text
    assert f"fewer than {production.MIN_SCORED} rows" in text
    assert "cheapest first" in text and "--from-db" in text and "--since AGE" in text
