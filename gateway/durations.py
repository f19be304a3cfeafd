"""Durations as the CLI takes them: `90m`, `12h`, `30d`, `2w`."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"\s*(\d+)\s*([mhdw])\s*")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta | None:
    """`90m`, `12h`, `30d`, `2w` -> that long; None when `text` is not written that way."""
    m = _DURATION.fullmatch(text)
    return None if m is None else timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])
