"""Durations on the command line: one parser behind `keys create --expires 30d` and `router train --since 12h`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.commands.keys import parse_when
from gateway.durations import parse_duration
from gateway.learning.dataset import UsageError
from gateway.learning.production import parse_since

pytestmark = pytest.mark.pure

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("90m", timedelta(minutes=90)), ("12h", timedelta(hours=12)), ("30d", timedelta(days=30)),
    ("2w", timedelta(weeks=2)), (" 3 d ", timedelta(days=3)), ("0m", timedelta(0)),
])
def test_durations_are_read(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "1y", "1.5h", "-2d", "2026-12-31"])
def test_other_text_is_not_a_duration(text: str) -> None:
    assert parse_duration(text) is None


def test_a_key_expires_after_a_duration_or_at_a_time() -> None:
    assert parse_when("30d", NOW) == NOW + timedelta(days=30)
    assert parse_when("2027-01-31", NOW) == datetime(2027, 1, 31, tzinfo=UTC)
    with pytest.raises(ValueError, match="not a date"):
        parse_when("soon", NOW)


def test_a_training_window_is_a_positive_duration() -> None:
    assert parse_since("2w") == timedelta(weeks=2)
    for bad in ("0d", "2027-01-31", "12"):
        with pytest.raises(UsageError, match="--since"):
            parse_since(bad)
