"""The closed loop of learned routing, end to end, on simulated pools with a hidden ground truth.

A gateway starts with an *untrained* predictor (every model predicted alike, so `auto` goes to the
cheaper model). Simulator traffic in three scripts goes through it; the test client posts feedback from
the `[ok]`/`[poor]` marks of the answers it gets; shadow evaluation asks the large model the same
requests and a simulated judge scores both answers. Then `gateway router train --from-db
--install-if-better` retrains from what production stored (features and scores, no text) and installs the
new predictor, which the running gateway hot-reloads. On fresh traffic the learned routing must reach
APGR >= 0.7 against the simulator's truth and save money at the quality of always using the large model.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from sqlalchemy import func, select

from gateway.accounting.prices import current_token_rates, load_prices
from gateway.cli import main as gateway_cli
from gateway.learning.metrics import apgr, cpt, pgr_curve
from gateway.learning.store import RoutingOutcome
from router.predictor import prior
from router.pricing import expected_cost
from tests.inprocess_gateway import InProcessGateway
from tests.learning_support import Database, learned_policies, outcome, prompts

ABILITY = {"demo-small": 0.55, "demo-large": 0.9}
TRUTH_SEED, SHARPNESS = 0, 12.0  # the simulator's defaults
LABELLED_CALLS = 240  # client feedback on each, and a shadow evaluation of each by the large model
FRESH = 300
MAX_TOKENS = 8  # enough for the marker
ROUTING = """\
defaults:
  reference_model: demo-large
  predictor: predictor.json
  quality_target: 0.9
rules:
  - name: learned
    route: {cheapest_above: {candidates: [demo-small, demo-large]}}
"""


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[InProcessGateway, Path, Path]]:
    root = tmp_path_factory.mktemp("loop")
    database = Database()
    url = database.url
    folder, prices_file = learned_policies(root, ROUTING, prior(["demo-small", "demo-large"], 0.5), judge=True)
    config = {
        "database_url": url, "policies_dir": str(folder), "prices_file": str(prices_file), "auto_migrate": True,
        "recorder_flush_interval_s": 0.05,
        "pools": [
            {"name": "small", "model": "demo-small", "launch": {"args": ["--ability", str(ABILITY["demo-small"])]}},
            {"name": "large", "model": "demo-large",
             "launch": {"args": ["--ability", str(ABILITY["demo-large"]), "--max-model-len", "8192"]}},
            {"name": "judge", "model": "demo-judge", "launch": {"args": ["--judge", "--max-model-len", "8192"]}},
        ],
        "shadow": {"sample_rate": 1.0, "judge": "demo-judge", "daily_budget": 100, "max_queue": 1000,
                   "concurrency": 4},
    }
    config_file = root / "gateway.yaml"  # what `gateway router train --from-db` reads the database from
    config_file.write_text(yaml.safe_dump({"database_url": url, "policies_dir": str(folder)}))
    gw = InProcessGateway(root, config).start()
    yield gw, folder, config_file
    gw.stop()
    database.drop()


def wait_for(check: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def shadow_scored(gw: InProcessGateway) -> int:
    """Calls whose shadow evaluation has stored its scores."""
    stmt = select(func.count(func.distinct(RoutingOutcome.request_id))).where(RoutingOutcome.source == "shadow")

    async def count() -> int:
        async with gw.ctx.accounting.engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar_one())

    return gw.call(count)


def predictor_name(gw: InProcessGateway) -> str:
    r = httpx.get(gw.base_url + "/admin/policy", headers=gw.auth, timeout=10)
    assert r.status_code == 200, r.text
    return str(r.json()["predictor"]["name"])


def predicted(gw: InProcessGateway, text: str) -> tuple[dict[str, float], int]:
    """The predictor's scores for a request (no worker call), and the request's estimated prompt tokens."""
    body = {"model": "auto", "messages": [{"role": "user", "content": text}], "max_tokens": MAX_TOKENS}
    r = httpx.post(gw.base_url + "/admin/route/explain", headers=gw.auth, json=body, timeout=10)
    assert r.status_code == 200, r.text
    explained: dict[str, Any] = r.json()
    return explained["quality"]["predicted"], int(explained["features"]["prompt_tokens"])


def test_routing_learns_from_feedback_and_shadow_outcomes(loop: tuple[InProcessGateway, Path, Path],
                                                          tmp_path: Path) -> None:
    gw, folder, config_file = loop
    untrained = predictor_name(gw)
    client = httpx.Client(base_url=gw.api, headers=gw.auth, timeout=30)

    # 1. Untrained, every request is predicted alike: all go to the cheaper model.
    train = prompts(TRUTH_SEED, LABELLED_CALLS, random.Random(1))
    for text in train:
        r = client.post("/chat/completions", json={"model": "auto", "max_tokens": MAX_TOKENS,
                                                   "messages": [{"role": "user", "content": text}]})
        assert r.status_code == 200, r.text
        assert r.headers["x-gateway-model"] == "demo-small"
        answer = r.json()["choices"][0]["message"]["content"]
        assert answer.startswith(("[ok]", "[poor]"))
        assert (answer.startswith("[ok]")) == bool(outcome(text, "demo-small", ABILITY["demo-small"], TRUTH_SEED,
                                                             SHARPNESS))
        fb = client.post("/feedback", json={"request_id": r.headers["x-request-id"],
                                            "label": "good" if answer.startswith("[ok]") else "bad"})
        assert fb.status_code == 200, fb.text
    wait_for(lambda: shadow_scored(gw) >= LABELLED_CALLS, "the shadow evaluation of every call")

    # 2. Retrain from what production stored, and install only if better than the untrained predictor.
    code = gateway_cli(["router", "train", "--from-db", "--models", "demo-small,demo-large", "--out",
                        str(tmp_path / "new"), "--install-if-better", "--config", str(config_file),
                        "--policies", str(folder)])
    assert code == 0
    wait_for(lambda: predictor_name(gw) != untrained, "the gateway to hot-reload the new predictor", 30.0)

    # 3. Fresh traffic: rank by the learned predictions and score against the simulator's truth.
    fresh = prompts(TRUTH_SEED, FRESH, random.Random(2))
    weak = np.array([outcome(t, "demo-small", ABILITY["demo-small"], TRUTH_SEED, SHARPNESS) for t in fresh])
    strong = np.array([outcome(t, "demo-large", ABILITY["demo-large"], TRUTH_SEED, SHARPNESS) for t in fresh])
    seen = [predicted(gw, t) for t in fresh]
    score = np.array([q["demo-large"] / max(q["demo-small"], 1e-6) for q, _ in seen])
    curve = pgr_curve(score, weak, strong)
    learned = apgr(curve)
    print(f"after {LABELLED_CALLS} labelled calls: APGR {learned:.3f} on {FRESH} fresh prompts "
          f"(small acceptable {weak.mean():.2f}, large {strong.mean():.2f})")
    assert learned >= 0.7

    # 4. Money saved at the quality of always using the large model: the share of large calls that reaches
    # PGR 1 on the learned ranking, priced with the catalogue.
    share = cpt(curve, 1.0)
    assert share is not None and share < 1.0
    rates = current_token_rates(load_prices(Path(str(gw.settings.prices_file))), datetime.now(UTC))
    small_cost = sum((expected_cost(rates["demo-small"], tokens, MAX_TOKENS) for _, tokens in seen), Decimal(0))
    large_cost = sum((expected_cost(rates["demo-large"], tokens, MAX_TOKENS) for _, tokens in seen), Decimal(0))
    mixed = Decimal(str(share)) * large_cost + (1 - Decimal(str(share))) * small_cost
    saved = 1 - mixed / large_cost
    print(f"at the quality of always demo-large: {share:.0%} of calls to demo-large, {saved:.0%} of the cost saved")
    assert saved > Decimal("0.1")

    # 5. The gateway itself now routes by it: the prompts it sends to the large model are the ones the
    # small model would have failed more often.
    to_small, to_large = [], []
    for text, w in zip(fresh[:100], weak[:100], strict=True):
        r = client.post("/chat/completions", json={"model": "auto", "max_tokens": MAX_TOKENS,
                                                   "messages": [{"role": "user", "content": text}]})
        assert r.status_code == 200, r.text
        (to_small if r.headers["x-gateway-model"] == "demo-small" else to_large).append(w)
    assert to_small and to_large
    assert np.mean(to_small) > np.mean(to_large) + 0.2
