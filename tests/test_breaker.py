from __future__ import annotations

import pytest

from workers.breaker import Breaker

pytestmark = pytest.mark.pure


def test_opens_after_threshold_and_probes_back_in() -> None:
    b = Breaker(threshold=3, cooldown_s=5, max_cooldown_s=20)
    for t in (0.0, 1.0):
        b.failed(t)
        assert b.allows(t)
    b.failed(2.0)
    assert not b.allows(2.0) and not b.allows(6.9) and b.is_open(6.9)
    assert b.allows(7.0)  # half-open: one probe
    assert not b.allows(7.0)  # and only one
    b.failed(7.5)  # probe failed: open again, twice as long
    assert not b.allows(17.4) and b.allows(17.5)
    b.succeeded()
    assert b.allows(17.6) and b.allows(17.6) and not b.is_open(17.6) and b.failures == 0


def test_cooldown_is_capped() -> None:
    b = Breaker(threshold=1, cooldown_s=10, max_cooldown_s=25)
    now = 0.0
    for expected in (10, 20, 25, 25):
        b.failed(now)
        assert b.open_until - now == expected
        now = b.open_until
        assert b.allows(now)


def test_success_resets_the_count() -> None:
    b = Breaker(threshold=2)
    b.failed(0)
    b.succeeded()
    b.failed(1)
    assert b.allows(1)
