"""Property: whatever the bodies, calls made at once against one small budget never record more than it.

One gateway in this process (tests/inprocess_gateway.py), its budgets in the real Redis (a key prefix of its
own), its usage records in a throwaway PostgreSQL database, and simulated workers that count prompt tokens
as a real engine does: tiktoken's cl100k_base over the whole rendered chat (no sampling), 64 tokens per
image part, every sequence running to its `max_tokens` or, without one, to the context window, which
matches the catalogue's (1,024 and 8,192 tokens). demo-large is given vision here, so images reach it.

Hypothesis draws batches of calls of adversarial shapes (multi-byte, CJK and emoji text, texts built
against routing's token sampler, lists of prompts, token-id prompts, `n`/`best_of`, no `max_tokens`,
images, streams); each batch is sent at once with a new key whose budget is `BUDGET`. Once
the recorder and the settler have drained, the SQL records of that key must sum to at most the budget.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from router.policy import default_policy_dir
from tests.auth_support import bearer
from tests.inprocess_gateway import InProcessGateway
from tests.limits_support import delete_prefix, require_redis, unique_prefix
from tests.pg_support import create_pg_database, drop_pg_database
from tests.services import redis_url
from tests.test_limits_reservation import sampler_attack

BUDGET = Decimal("0.05")  # two calls that fill demo-large's window fit, a few dozen ordinary ones
FAST_SIM = ("--ttft-ms", "0", "--output-token-ms", "0", "--prompt-token-us", "0")
POOLS = [
    {"name": "small", "model": "demo-small", "launch": {"args": [*FAST_SIM, "--max-model-len", "1024"]}},
    {"name": "large", "model": "demo-large", "launch": {"args": [*FAST_SIM, "--max-model-len", "8192"]}},
]

Call = tuple[str, dict[str, Any]]  # (path, body)


class Budgeted:
    def __init__(self, gw: InProcessGateway, database: str) -> None:
        self.gw = gw
        self.database = database
        self.answered = 0  # calls answered 200, over every batch: the property is not checked on refusals alone
        self.spent = Decimal(0)

    def new_key(self) -> tuple[str, str]:
        made = httpx.post(self.gw.base_url + "/admin/keys", headers=self.gw.auth, json={
            "tenant": "prop", "team": "red", "role": "app", "budget": str(BUDGET)})
        assert made.status_code == 201, made.text
        return made.json()["key"], made.json()["id"]

    async def recorded(self, key_id: str) -> tuple[Decimal, int]:
        engine = create_async_engine(self.database)
        try:
            async with engine.connect() as conn:
                row = (await conn.execute(text(
                    "SELECT coalesce(sum(cost), 0), count(*) FROM usage_records WHERE key_id = :k"),
                    {"k": key_id})).one()
        finally:
            await engine.dispose()
        return Decimal(row[0]), int(row[1])


def _vision_policies(root: Path) -> Path:
    """The shipped policy, with demo-large able to take images."""
    target = root / "policies"
    shutil.copytree(default_policy_dir(), target)
    models = target / "models.yaml"
    data = yaml.safe_load(models.read_text())
    for model in data["models"]:
        if model["name"] == "demo-large":
            model["capabilities"] = [*model["capabilities"], "vision"]
    models.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Budgeted]:
    require_redis()
    database = asyncio.run(create_pg_database())
    prefix = unique_prefix()
    root = tmp_path_factory.mktemp("budget-property")
    config = {
        "database_url": database, "auto_migrate": True, "redis_url": redis_url(), "pools": POOLS,
        "policies_dir": str(_vision_policies(root)), "limits_key_prefix": prefix + "limits:",
        "cache_key_prefix": prefix + "cache:", "feedback_key_prefix": prefix + "feedback:",
        "recorder_flush_interval_s": 0.05, "max_body_bytes": 1_000_000,
        # A budget counter starts from the database, a batch's calls all at once on 2 shared cores: room for it.
        "database_request_timeout_s": 5.0, "redis_timeout_s": 5.0,
    }
    gw = InProcessGateway(root / "gw", config).start()
    try:
        yield Budgeted(gw, database)
    finally:
        gw.stop()
        delete_prefix(prefix)
        asyncio.run(drop_pg_database(database))


# ------------------------------------------------------------------------------------------------ shapes

ANY_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300)  # emoji, CJK, controls
WIDE_TEXT = st.text(st.sampled_from("中文字符Жக🂡ꙮ\u0301é"), min_size=1, max_size=600)  # several bytes a character
ATTACK = st.builds(sampler_attack, st.integers(4200, 4700), st.sampled_from("Жக中"))  # fools routing's estimate
TEXT = st.one_of(ANY_TEXT, WIDE_TEXT, ATTACK)
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
PART = st.one_of(st.builds(lambda t: {"type": "text", "text": t}, ANY_TEXT | WIDE_TEXT), st.just(IMAGE))
MESSAGE = st.fixed_dictionaries({
    "role": st.sampled_from(["system", "user", "assistant", "user"]),
    "content": st.one_of(TEXT, st.lists(PART, min_size=1, max_size=3)),
})
TOKEN_IDS = st.lists(st.integers(0, 100_000), min_size=1, max_size=200)
PROMPT = st.one_of(TEXT, st.lists(ANY_TEXT | WIDE_TEXT, min_size=1, max_size=40), TOKEN_IDS,
                   st.lists(TOKEN_IDS, min_size=1, max_size=12))
MODEL = st.sampled_from(["demo-large", "demo-small", "auto"])
N = st.one_of(st.none(), st.integers(1, 3))
MAX_TOKENS = st.one_of(st.none(), st.integers(1, 96))


def _body(base: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    return {**base, **{k: v for k, v in options.items() if v is not None}}


CHAT: st.SearchStrategy[Call] = st.builds(
    lambda model, messages, options: ("/v1/chat/completions", _body({"model": model, "messages": messages}, options)),
    MODEL, st.lists(MESSAGE, min_size=1, max_size=3),
    st.fixed_dictionaries({"n": N, "max_tokens": MAX_TOKENS, "stream": st.booleans(),
                           "max_completion_tokens": st.one_of(st.none(), st.integers(1, 96))}),
)
COMPLETION: st.SearchStrategy[Call] = st.builds(
    lambda model, prompt, options: ("/v1/completions", _body({"model": model, "prompt": prompt}, options)),
    MODEL, PROMPT,
    st.fixed_dictionaries({"n": N, "best_of": st.one_of(st.none(), st.integers(1, 3)), "max_tokens": MAX_TOKENS,
                           "stream": st.booleans()}),
)
BATCH = st.lists(st.one_of(CHAT, COMPLETION), min_size=4, max_size=12)

# The calls that overspent before the reservation was an upper bound: a list of prompts reserved as one,
# prompts built against the sampler, n x prompts, no max_tokens.
MANY_PROMPTS: Call = ("/v1/completions", {"model": "demo-large", "prompt": [f"Count to {i}." for i in range(40)],
                                          "max_tokens": 64})
SAMPLER: Call = ("/v1/chat/completions", {"model": "demo-large", "max_tokens": 64,
                                          "messages": [{"role": "user", "content": sampler_attack(4600, "Ж")}]})
N_PROMPTS: Call = ("/v1/completions", {"model": "demo-large", "prompt": ["a", "b", "c", "d"], "n": 3,
                                       "best_of": 3, "max_tokens": 96})
OPEN_ENDED: Call = ("/v1/chat/completions", {"model": "demo-large",
                                             "messages": [{"role": "user", "content": "Go on."}]})


async def _send(base: str, key: str, calls: list[Call]) -> list[tuple[int, str]]:
    """Each call's status, and its error's code (or its text) when it failed."""
    async with httpx.AsyncClient(base_url=base, headers=bearer(key), timeout=120,
                                 limits=httpx.Limits(max_connections=64)) as client:
        async def one(path: str, body: dict[str, Any]) -> tuple[int, str]:
            async with client.stream("POST", path, json=body) as r:
                content = await r.aread()  # a stream to its end
            if r.status_code == 200:
                return 200, ""
            try:
                return r.status_code, str(r.json()["error"]["code"])
            except ValueError:
                return r.status_code, content[:200].decode(errors="replace")

        return list(await asyncio.gather(*(one(path, body) for path, body in calls)))


def test_calls_at_once_never_record_more_than_their_budget(budgeted: Budgeted) -> None:
    gw = budgeted.gw

    @settings(max_examples=12, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(BATCH)
    @example([MANY_PROMPTS] * 8)
    @example([SAMPLER] * 12 + [N_PROMPTS] * 4)
    @example([OPEN_ENDED] * 4 + [MANY_PROMPTS] * 4)
    def batch(calls: list[Call]) -> None:
        key, key_id = budgeted.new_key()
        answers = asyncio.run(_send(gw.base_url, key, calls))
        statuses = [status for status, _ in answers]
        assert all(s < 500 for s in statuses), answers
        gw.flush()  # every record written, every reservation settled
        spent, records = asyncio.run(budgeted.recorded(key_id))
        assert spent <= BUDGET, f"recorded {spent} against a budget of {BUDGET} ({len(calls)} calls: {statuses})"
        budgeted.answered += statuses.count(200)
        budgeted.spent += spent
        assert records >= statuses.count(200)  # every answered call is on the books

    batch()
    assert budgeted.answered >= 10 and budgeted.spent > 0  # calls got through: the budget was spent, not refused
