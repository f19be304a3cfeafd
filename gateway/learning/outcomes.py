"""Outcome data: prompts with the score each model got on them, the predictor's training material.

The format is JSON Lines, one object per prompt:

    {"id": "math/17", "source": "math",
     "messages": [{"role": "user", "content": "..."}],          # or "prompt": "..." (a completion)
     "outcomes": {"small-model": 0.0, "large-model": 1.0},     # scores in [0, 1], higher is better
     "max_tokens": 512, "tools": [...], ...}                   # optional request fields, as a client sends them

Any other key (`meta`, ...) is kept out of the request. A file is read whole and checked; every bad
line is reported as `file:line: message`. Splits go by prompt text (normalised), never by id, so the
same prompt under two ids cannot sit on both sides.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "REQUEST_FIELDS", "DataError", "OutcomeRow", "head_score", "in_holdout", "in_share", "read_outcomes", "split",
]

# Request fields a row may carry besides its text; they shape the features (max_tokens, tools...).
REQUEST_FIELDS = frozenset((
    "max_tokens", "max_completion_tokens", "tools", "functions", "tool_choice", "response_format", "n",
    "temperature", "top_p", "seed", "stop", "logprobs", "top_logprobs", "stream",
))


class DataError(Exception):
    """Outcome data that cannot be used; `problems` are `file:line: message` lines."""

    def __init__(self, problems: list[str]) -> None:
        more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__("\n".join(problems[:20]) + more)
        self.problems = problems


@dataclass(frozen=True, slots=True)
class OutcomeRow:
    id: str
    source: str | None
    kind: Literal["chat", "completion"]
    body: dict[str, Any]  # the request as a client would send it (messages or prompt, plus request fields)
    outcomes: Mapping[str, float]
    where: str  # file:line

    def text(self) -> str:
        """All of the prompt's text, for splitting and the length baseline."""
        if self.kind == "completion":
            prompt = self.body["prompt"]
            return prompt if isinstance(prompt, str) else "\n".join(p for p in prompt if isinstance(p, str))
        parts = []
        for msg in self.body["messages"]:
            content = msg.get("content") if isinstance(msg, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts += [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "\n".join(parts)


def _row(obj: Any, where: str, problems: list[str]) -> OutcomeRow | None:
    if not isinstance(obj, dict):
        problems.append(f"{where}: a row must be a JSON object")
        return None
    rid = obj.get("id")
    if not isinstance(rid, str) or not rid:
        problems.append(f"{where}: `id` must be a non-empty string")
        return None
    messages, prompt = obj.get("messages"), obj.get("prompt")
    if (messages is None) == (prompt is None):
        problems.append(f"{where}: a row needs exactly one of `messages` or `prompt`")
        return None
    if messages is not None and not (
        isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)
    ):
        problems.append(f"{where}: `messages` must be a non-empty list of message objects")
        return None
    if prompt is not None and not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt)):
        problems.append(f"{where}: `prompt` must be a string or a list")
        return None
    outcomes = obj.get("outcomes")
    if not isinstance(outcomes, dict) or not outcomes:
        problems.append(f"{where}: `outcomes` must be a non-empty object of model -> score")
        return None
    scores: dict[str, float] = {}
    for model, score in outcomes.items():
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score) \
                or not 0.0 <= score <= 1.0:
            problems.append(f"{where}: the score of `{model}` must be a number in [0, 1], not {score!r}")
            return None
        scores[model] = float(score)
    source = obj.get("source")
    if source is not None and not isinstance(source, str):
        problems.append(f"{where}: `source` must be a string")
        return None
    body: dict[str, Any] = {k: v for k, v in obj.items() if k in REQUEST_FIELDS}
    if messages is not None:
        body["messages"] = messages
    else:
        body["prompt"] = prompt
    kind: Literal["chat", "completion"] = "chat" if messages is not None else "completion"
    return OutcomeRow(rid, source, kind, body, scores, where)


def read_outcomes(paths: Sequence[Path]) -> list[OutcomeRow]:
    """Every row of these files (in order); raises DataError listing every bad line."""
    rows: list[OutcomeRow] = []
    problems: list[str] = []
    for path in paths:
        try:
            handle = path.open("rb")
        except OSError as exc:
            problems.append(f"{path}:1: cannot read the file: {exc.strerror or exc}")
            continue
        with handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    problems.append(f"{where}: not JSON: {exc}")
                    continue
                row = _row(obj, where, problems)
                if row is not None:
                    rows.append(row)
    if problems:
        raise DataError(problems)
    if not rows:
        raise DataError([f"{', '.join(map(str, paths))}: no rows"])
    return rows


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


_SPACE = re.compile(r"\s+")


def in_share(key: str, share: float, seed: int) -> bool:
    """Whether `key` falls in a `share` of all keys, stably for a seed (a hash of both, not a draw)."""
    if share <= 0:
        return False
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < share


def in_holdout(text: str, holdout: float, seed: int) -> bool:
    """Whether a prompt belongs to the held-out share (by its normalised text, stable for a seed)."""
    return in_share(_SPACE.sub(" ", text.strip().lower()), holdout, seed)


def split(rows: Iterable[OutcomeRow], holdout: float, seed: int) -> tuple[list[OutcomeRow], list[OutcomeRow]]:
    """(training rows, held-out rows): a share `holdout` of the distinct prompt texts is held out."""
    train: list[OutcomeRow] = []
    test: list[OutcomeRow] = []
    for row in rows:
        (test if in_holdout(row.text(), holdout, seed) else train).append(row)
    return train, test


def head_score(scores: Mapping[str, float], members: Sequence[str]) -> float | None:
    """A head's score on a row (given the row's outcome name -> score): the mean of its members' scores
    present there (None: none is)."""
    found = [scores[m] for m in members if m in scores]
    return sum(found) / len(found) if found else None
