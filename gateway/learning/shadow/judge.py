"""Scoring two answers to one request: the exact judge (normalised text equality), or a judge model given
the grading prompt (`policies/judge/grading-prompt.md`), whose verdict is a JSON object {"a": 0-10, "b": 0-10}."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

from gateway.learning.shadow.answers import normalised
from router.policy import default_policy_dir

EXACT = "exact"
PROMPT_FILE = Path("judge") / "grading-prompt.md"  # under the policies directory
SLOTS = ("question", "answer_a", "answer_b")
_SLOT = re.compile(r"\{(question|answer_a|answer_b)\}")
_TAG = re.compile(r"<(/?)(answer_[ab]|question)>", re.IGNORECASE)
JUDGE_MAX_TOKENS = 64


class GradingPromptError(ValueError):
    """The grading prompt cannot be used; the message names the file."""


def grading_prompt_path(policies_dir: Path) -> Path:
    """The policy directory's grading prompt, else the shipped one."""
    own = policies_dir / PROMPT_FILE
    return own if own.is_file() else default_policy_dir() / PROMPT_FILE


def load_grading_prompt(path: Path) -> str:
    try:
        template = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GradingPromptError(f"{path}: cannot read the grading prompt: {exc.strerror}") from None
    missing = [f"{{{slot}}}" for slot in SLOTS if f"{{{slot}}}" not in template]
    if missing:
        raise GradingPromptError(f"{path}: the grading prompt lacks {', '.join(missing)}")
    return template


def _defused(text: str) -> str:
    # A text cannot open or close the prompt's own tags, so an answer cannot pose as the other one.
    return _TAG.sub(r"<\1 \2>", text)


def grading_request(template: str, question: str, answer_a: str, answer_b: str) -> str:
    """The prompt with its placeholders filled in one pass (a text holding `{answer_b}` stays as it is)."""
    values = {"question": _defused(question), "answer_a": _defused(answer_a), "answer_b": _defused(answer_b)}
    return _SLOT.sub(lambda m: values[m.group(1)], template)


def swapped(request_id: str) -> bool:
    """Whether the reference answer is shown first: half the calls each way, by a hash of the request id, so
    that a judge's preference for one position cancels out."""
    return bool(hashlib.blake2b(request_id.encode(), digest_size=1, person=b"judge-order").digest()[0] & 1)


def _score(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            and 0 <= value <= 10)


def parse_verdict(text: str) -> tuple[float, float] | None:
    """(a, b) / 10 from the first JSON object in `text` whose `a` and `b` are numbers from 0 to 10."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start >= 0:
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            value = None
        if isinstance(value, dict) and _score(value.get("a")) and _score(value.get("b")):
            return float(value["a"]) / 10, float(value["b"]) / 10
        start = text.find("{", start + 1)
    return None


def exact_scores(answer: str, reference: str) -> tuple[float, float]:
    """(answer, reference): the reference counts as right, the answer as right when it says the same."""
    return (1.0 if normalised(answer) == normalised(reference) else 0.0), 1.0
