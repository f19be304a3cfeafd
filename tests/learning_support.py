"""What the tests of learning from production share: a policy directory that routes on a given predictor
(with a simulated judge model when asked), a PostgreSQL database of a test's own, and simulator traffic
whose difficulty the simulator's hidden truth (vllm_sim/truth.py) decides.

The prompts are made of made-up words in Latin and Cyrillic letters and of CJK characters, so nothing
English-specific can carry the signal. Each prompt draws its words from the hard and the easy ones in a
random mix, skewed towards easy, as real traffic is.
"""

from __future__ import annotations

import asyncio
import random
import shutil
from pathlib import Path
from typing import Any

import yaml

from tests.pg_support import create_pg_database, drop_pg_database
from vllm_sim import truth

POLICIES = Path(__file__).resolve().parents[1] / "policies"
JUDGE_PRICE = {"effective_from": "2026-01-01", "per_token": {"input_per_million": 0.5, "output_per_million": 1.0}}
SCRIPTS = (("bcdfghklmnprstvz", "aeiou"), ("бвгдклмнпрст", "аеиоу"))  # Latin, Cyrillic
CJK = "日月火水木金土山川田人口目耳手足力心体本文字学生先年雨花草竹石糸貝車門"


def learned_policies(where: Path, routing: str, predictor: bytes, judge: bool = False) -> tuple[Path, Path]:
    """The shipped catalogue, classifier and prices with `routing` as routing.yaml and `predictor` as
    predictor.json (routing names it `predictor: predictor.json`); with `judge`, a model `demo-judge` on
    pool `judge` and its price. Returns the policy directory and the price file."""
    folder = where / "policies"
    shutil.copytree(POLICIES, folder, ignore=shutil.ignore_patterns("tests", "training", "predictor"))
    (folder / "predictor.json").write_bytes(predictor)
    (folder / "routing.yaml").write_text(routing)
    prices: dict[str, Any] = yaml.safe_load((POLICIES / "prices.yaml").read_text())
    if judge:
        models = yaml.safe_load((folder / "models.yaml").read_text())
        models["models"].append({"name": "demo-judge", "description": "The simulator's judge mode.",
                                 "pool": "judge", "context_window": 8192, "tier": 2})
        (folder / "models.yaml").write_text(yaml.safe_dump(models, sort_keys=False))
        prices["models"]["demo-judge"] = [JUDGE_PRICE]
    prices_file = where / "prices.yaml"
    prices_file.write_text(yaml.safe_dump(prices, sort_keys=False))
    return folder, prices_file


class Database:
    """A PostgreSQL database of the test's own, made and dropped around a module's gateway."""

    def __init__(self) -> None:
        self.url = asyncio.run(create_pg_database())

    def drop(self) -> None:
        asyncio.run(drop_pg_database(self.url))


def vocabulary(seed: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """(hard words, easy words) under the simulator's truth for `seed`."""
    words: list[str] = []
    for consonants, vowels in SCRIPTS:
        for _ in range(60):
            words.append("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(2, 4))))
    words += list(CJK)
    words = list(dict.fromkeys(words))
    hard = [w for w in words if truth.difficulty(w, seed) > 0.5]  # one unit: 0.8 if hard, plus a small length term
    easy = [w for w in words if w not in hard]
    return hard, easy


def prompts(seed: int, count: int, rng: random.Random) -> list[str]:
    """`count` prompts; the same seed and rng state give the same prompts."""
    hard, easy = vocabulary(seed, random.Random(seed))
    out = []
    for _ in range(count):
        mix = rng.random() ** 2  # the share of hard words: mostly easy prompts
        units = [rng.choice(hard) if rng.random() < mix else rng.choice(easy) for _ in range(rng.randint(4, 40))]
        out.append(" ".join(units))
    return out


def outcome(text: str, model: str, ability: float, seed: int, sharpness: float) -> float:
    """The score the simulated `model` gets on `text` (1 acceptable, 0 not): what its marker will say."""
    return 1.0 if truth.acceptable(text, model, ability, seed, sharpness) else 0.0
