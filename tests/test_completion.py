"""The steps after a call's last byte (gateway/completion.py) and `finish` (gateway/outcome.py): built in one
fixed order from the app's services, run once, in order, each on its own.

Pure: in-process services only (the memory cache and limits, a recorder without a database).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.accounting.prices import DEFAULT_PRICES_FILE, load_prices
from gateway.accounting.recorder import Recorder
from gateway.cache.backends import MemoryBackend as CacheMemory
from gateway.cache.service import ResponseCache
from gateway.cache.ticket import Ticket
from gateway.completion import completion_steps
from gateway.inference.usage import Usage
from gateway.learning.shadow.answers import Watch
from gateway.learning.stash import MemoryStash
from gateway.limits.backend import MemoryBackend as LimitsMemory
from gateway.limits.service import Limits
from gateway.outcome import Outcome, Step, finish
from gateway.telemetry.metrics import RequestMetrics

pytestmark = pytest.mark.pure


def outcome(*steps: Step) -> Outcome:
    return Outcome("req-1", "demo-small", time.perf_counter(), steps=steps)


def test_the_steps_come_in_their_fixed_order(tmp_path: Path) -> None:
    catalogue = load_prices(DEFAULT_PRICES_FILE)
    metrics, recorder = RequestMetrics(CollectorRegistry()), Recorder(None, catalogue, tmp_path)
    everything = completion_steps(metrics, recorder, ResponseCache(CacheMemory(10, 10_000)),
                                  Limits(LimitsMemory(), catalogue, None), MemoryStash(60, 10))
    assert [s.name for s in everything] == ["cache store", "feature stash", "request metrics", "record",
                                            "budget settlement"]
    assert [s.name for s in completion_steps(metrics, recorder)] == ["request metrics", "record"]


def test_finish_runs_each_step_once_in_order_and_a_failure_stops_none(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    def broken(o: Outcome) -> None:
        ran.append("broken")
        raise RuntimeError("boom")

    o = outcome(Step("first", lambda o: ran.append("first")), Step("broken", broken),
                Step("last", lambda o: ran.append(f"last {o.finished is not None}")))
    with caplog.at_level(logging.ERROR, logger="gateway.access"):
        finish(o)
        finish(o)  # once only
    assert ran == ["first", "broken", "last True"]
    assert [r.getMessage() for r in caplog.records] == ["request req-1: broken failed after the call"]


def test_finish_drops_the_prompt_once_usage_is_known() -> None:
    o = outcome()
    o.prompt, o.usage = [{"role": "user", "content": "hi"}], Usage(1, 1, 2)
    finish(o)
    assert o.prompt is None and o.finished is not None


def test_finish_lets_go_of_what_only_the_steps_needed() -> None:
    """A finished outcome waits in the recorder's queue: the steps saw the ticket and the shadow's watch, and
    the outcome holds neither afterwards (under load, thousands of queued outcomes would keep them alive)."""
    seen: list[tuple[object, object]] = []
    o = outcome(Step("look", lambda o: seen.append((o.ticket, o.watch))))
    o.ticket, o.watch = Ticket("miss", key="k", model="demo-small"), Watch({"model": "auto"})
    finish(o)
    assert len(seen) == 1 and None not in seen[0]
    assert (o.ticket, o.admission, o.quality, o.watch) == (None, None, None, None)
