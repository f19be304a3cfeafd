"""The vLLM *simulator*'s judge mode: grades two answers by the quality markers they carry.

It stands in for a real judge model reading a grading prompt: a real judge would read the two
answers; this one only looks for the markers of :mod:`vllm_sim.truth`.
"""

from __future__ import annotations

import re

from vllm_sim.truth import OK_MARKER, POOR_MARKER

__all__ = ["score", "verdict"]

_ANSWER_A = re.compile(r"<answer_a>(.*?)</answer_a>", re.DOTALL)
_ANSWER_B = re.compile(r"<answer_b>(.*?)</answer_b>", re.DOTALL)


def score(answer: str) -> int:
    """10 for an answer marked acceptable, 0 for one marked poor, 5 when it carries no marker."""
    if OK_MARKER in answer:
        return 10
    if POOR_MARKER in answer:
        return 0
    return 5


def verdict(prompt: str) -> str | None:
    """``{"a": A, "b": B}`` for a prompt holding an ``<answer_a>`` and an ``<answer_b>`` block, else None."""
    a = _ANSWER_A.search(prompt)
    b = _ANSWER_B.search(prompt)
    if a is None or b is None:
        return None
    return f'{{"a": {score(a.group(1))}, "b": {score(b.group(1))}}}'
