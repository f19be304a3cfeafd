"""Hidden ground truth of answer quality for the vLLM *simulator*.

A simulated model has an ``ability`` in [0, 1]; a prompt has a ``difficulty`` in [0, 1].  The
answer of a model to a prompt is acceptable with probability
``logistic(sharpness * (ability - difficulty))``, and whether it is acceptable is decided by a
keyed hash, so the same prompt and model always give the same outcome.  The gateway cannot see
any of this: it only sees the ``[ok]`` / ``[poor]`` marker the simulator puts at the start of
its answers (and what a simulated judge says about them), so a learned router can be tested
end to end against a truth it has to learn from feedback.

Difficulty is language-independent: text is cut into units (runs of non-whitespace; one unit per
character in scripts written without spaces) and each unit is "hard" or not by a keyed hash of
its lower-cased form.  Nothing here does I/O.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re

__all__ = ["OK_MARKER", "POOR_MARKER", "acceptable", "difficulty", "p_acceptable"]

#: Start of an acceptable answer (the simulator follows it with a space and its text).
OK_MARKER = "[ok]"
#: Start of an answer that is not acceptable.
POOR_MARKER = "[poor]"

HARD_SHARE = 0.35  # expected share of hard units in any text
_SHARE_UNITS = 256  # units whose hardness counts (a long prompt is not harder for its tail)
_LENGTH_UNITS = 400  # the length term saturates here
_LENGTH_SCALE = math.log1p(_LENGTH_UNITS)
_HARD_WEIGHT = 0.8
_LENGTH_WEIGHT = 0.2

# Scripts written without spaces between words: every character is a unit of its own.
_UNSPACED = (
    "\u0e00-\u0e7f"  # Thai
    "\u1100-\u11ff"  # Hangul Jamo
    "\u3040-\u309f"  # Hiragana
    "\u30a0-\u30ff"  # Katakana
    "\u3130-\u318f"  # Hangul Compatibility Jamo
    "\u31f0-\u31ff"  # Katakana Phonetic Extensions
    "\u3400-\u4dbf"  # CJK Unified Ideographs Extension A
    "\u4e00-\u9fff"  # CJK Unified Ideographs
    "\uac00-\ud7af"  # Hangul Syllables
    "\uf900-\ufaff"  # CJK Compatibility Ideographs
    "\uff66-\uff9f"  # Halfwidth Katakana
    "\U00020000-\U0003134f"  # CJK Unified Ideographs Extensions B-G and supplements
)
_UNIT_RE = re.compile(f"[{_UNSPACED}]|[^\\s{_UNSPACED}]+")
_TWO_64 = float(1 << 64)


def _key(seed: int) -> bytes:
    return seed.to_bytes(8, "little", signed=True)


def _unit_hash(seed: int, data: bytes, person: bytes) -> float:
    """A keyed hash of ``data`` mapped to [0, 1)."""
    h = hashlib.blake2b(data, digest_size=8, key=_key(seed), person=person)
    return int.from_bytes(h.digest(), "little") / _TWO_64


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # JSON strings may carry lone surrogates


@functools.lru_cache(maxsize=65536)  # prompts repeat their words: one hash per word and seed
def _is_hard(unit: str, seed: int) -> bool:
    return _unit_hash(seed, _utf8(unit.lower()), b"sim-truth-unit") < HARD_SHARE


def difficulty(text: str, seed: int) -> float:
    """How hard ``text`` is to answer well, in [0, 1] (0 for empty text).

    ``0.8 * share of hard units among the first 256`` ``+ 0.2 * min(1, log1p(units) / log1p(400))``.
    ``seed`` (a signed 64-bit integer) keys the hash that makes a unit hard.
    """
    units = 0
    hard = 0
    for m in _UNIT_RE.finditer(text):
        if units < _SHARE_UNITS and _is_hard(m.group(), seed):
            hard += 1
        units += 1
        if units >= _LENGTH_UNITS:  # nothing further changes the result
            break
    if units == 0:
        return 0.0
    share = hard / min(units, _SHARE_UNITS)
    return _HARD_WEIGHT * share + _LENGTH_WEIGHT * min(1.0, math.log1p(units) / _LENGTH_SCALE)


def p_acceptable(difficulty: float, ability: float, sharpness: float) -> float:
    """Probability that a model of ``ability`` answers a prompt of ``difficulty`` acceptably."""
    x = sharpness * (ability - difficulty)
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)  # the same logistic, without overflow for very negative x
    return e / (1.0 + e)


def acceptable(text: str, model: str, ability: float, seed: int, sharpness: float) -> bool:
    """Whether ``model`` (of ``ability``) answers ``text`` acceptably; a pure function of its arguments.

    A keyed hash of (model, text) gives u in [0, 1); the answer is acceptable when
    ``u < p_acceptable(difficulty(text, seed), ability, sharpness)``.
    """
    name = _utf8(model)
    u = _unit_hash(seed, len(name).to_bytes(4, "little") + name + _utf8(text), b"sim-truth-answer")
    return u < p_acceptable(difficulty(text, seed), ability, sharpness)
