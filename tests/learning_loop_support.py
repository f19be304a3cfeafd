"""Simulator traffic for the learned-routing loop: prompts in several scripts whose difficulty the
simulator's hidden truth (workers/simulator/truth.py) decides, and the truth itself for scoring.

Prompts are made of made-up words in Latin and Cyrillic letters and of CJK characters (written with or
without spaces), so nothing English-specific can carry the signal. Each prompt draws its words from the
hard and the easy ones in a random mix, skewed towards easy, as real traffic is.
"""

from __future__ import annotations

import random

from workers.simulator import truth

SCRIPTS = {
    "latin": ("bcdfghklmnprstvz", "aeiou"),
    "cyrillic": ("бвгдклмнпрст", "аеиоу"),
}
CJK = "日月火水木金土山川田人口目耳手足力心体本文字学生先年雨花草竹石糸貝車門"


def vocabulary(seed: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """(hard words, easy words) under the simulator's truth for `seed`."""
    words: list[str] = []
    for consonants, vowels in SCRIPTS.values():
        for _ in range(60):
            words.append("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(2, 4))))
    words += list(CJK)
    words = list(dict.fromkeys(words))
    hard = [w for w in words if truth.difficulty(w, seed) > 0.5]  # one unit: 0.8 * (hard or not) + a small length term
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
