"""Outcome files as the commands use them: rows, where they came from, and the checks users need.

`load` reads the files (DataError on bad lines) and notes each file's name, sha256 and row count,
the provenance an artefact carries. `check_outcome_names` turns a misspelt model into one clear line
that names the closest outcome names present.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.learning.outcomes import OutcomeRow, file_digest, read_outcomes

__all__ = ["DataSet", "UsageError", "check_outcome_names", "load", "outcome_counts"]


class UsageError(Exception):
    """A user's mistake (arguments, names, files): `lines` are printed one per line, no traceback."""

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


@dataclass(frozen=True)
class DataSet:
    rows: list[OutcomeRow]
    files: list[dict[str, Any]]  # per file: name, sha256, rows

    def digests(self) -> list[str]:
        return [f["sha256"] for f in self.files]


def load(paths: Sequence[Path]) -> DataSet:
    """The rows of these files, in order, with each file's provenance; raises DataError on bad data."""
    twice = sorted({str(p) for p in paths if list(paths).count(p) > 1})
    if twice:
        raise UsageError(f"--data names {', '.join(twice)} more than once")
    rows = read_outcomes(paths)
    per_file = Counter(row.where.rsplit(":", 1)[0] for row in rows)
    files = [{"name": path.name, "sha256": file_digest(path), "rows": per_file[str(path)]} for path in paths]
    return DataSet(rows, files)


def outcome_counts(outcomes: Iterable[Mapping[str, float]]) -> Counter[str]:
    """How many rows score each outcome name (given each row's outcomes: a file row's, a request's)."""
    return Counter(name for scores in outcomes for name in scores)


def check_outcome_names(outcomes: Iterable[Mapping[str, float]], heads: Mapping[str, Sequence[str]]) -> None:
    """Raise UsageError naming every outcome name no row scores, with the closest names that some row does."""
    counts = outcome_counts(outcomes)
    known = sorted(counts)
    lines = []
    for head, members in heads.items():
        for name in members:
            if counts[name]:
                continue
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            hint = f"; closest: {', '.join(close)}" if close else ""
            owner = f" (in `{head}`)" if list(members) != [head] else ""
            lines.append(f"unknown model `{name}`{owner}: no row scores it{hint}")
    if lines:
        raise UsageError(*lines, f"the data score {len(known)} models")
