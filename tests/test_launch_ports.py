"""`launch_ports`: its parsing and validation, and the ports launched replicas get from it (a port in use is
skipped; none left is a clear error). `workers`' own validation is here too."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from gateway.settings import SettingsError, load_settings
from workers.config import LaunchSpec
from workers.launcher import NoFreePort, PoolLaunch, bindable, parse_port_range, plan

pytestmark = pytest.mark.pure


@pytest.mark.parametrize(("text", "expected"), [
    ("20000-20999", (20000, 20999)), (" 1024-1024 ", (1024, 1024)), ("30000 - 30001", (30000, 30001)),
    ("65535-65535", (65535, 65535)),
])
def test_a_range_is_first_and_last_port(text: str, expected: tuple[int, int]) -> None:
    assert parse_port_range(text) == expected


@pytest.mark.parametrize(("text", "problem"), [
    ("20000", "is not a port range FIRST-LAST"), ("a-b", "is not a port range"), ("-5-10", "is not a port range"),
    ("20000-", "is not a port range"), ("80-90", "ports must be from 1024 to 65535"),
    ("60000-70000", "ports must be from 1024 to 65535"), ("20010-20000", "the first port is above the last"),
])
def test_a_bad_range_says_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_port_range(text)


def test_settings_refuse_a_bad_range_or_one_too_small_for_the_launched_replicas() -> None:
    # The embedded pools launch two simulators.
    assert load_settings(env={}, overrides={"launch_ports": "20000-20001"}).launch_ports == "20000-20001"
    with pytest.raises(SettingsError, match=r"launch_ports 20000-20000 has 1 port\(s\) for 2 launched replicas"):
        load_settings(env={}, overrides={"launch_ports": "20000-20000"})
    with pytest.raises(SettingsError, match="launch_ports: `80-90`: ports must be from 1024"):
        load_settings(env={"GATEWAY_LAUNCH_PORTS": "80-90"})


def test_workers_are_at_least_one_and_several_need_redis() -> None:
    assert load_settings(env={}).workers == 1
    assert load_settings(env={"GATEWAY_WORKERS": "3", "GATEWAY_REDIS_URL": "redis://127.0.0.1:6379/0"}).workers == 3
    with pytest.raises(SettingsError, match="workers must be >= 1"):
        load_settings(env={"GATEWAY_WORKERS": "0"})
    with pytest.raises(SettingsError, match=r"workers: 2 needs redis_url \(GATEWAY_REDIS_URL\)"):
        load_settings(env={"GATEWAY_WORKERS": "2"})
    with pytest.raises(SettingsError, match="serve metrics on 65535-65536, past 65535"):
        load_settings(env={}, overrides={"workers": 2, "redis_url": "redis://x", "metrics_port": 65535})


@pytest.fixture
def free_range() -> Iterator[tuple[int, int]]:
    """Three consecutive ports nothing listens on (found by the OS's own choice, then checked)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        if first + 2 <= 65535 and all(bindable(p) for p in range(first, first + 3)):
            yield first, first + 2
            return
    raise RuntimeError("no three consecutive free ports found")


def _sims(*replicas: int) -> list[PoolLaunch]:
    return [PoolLaunch(f"p{i}", f"m{i}", LaunchSpec(replicas=n)) for i, n in enumerate(replicas)]


def test_replicas_take_the_range_in_order_and_skip_a_port_in_use(free_range: tuple[int, int]) -> None:
    first, last = free_range
    assert [p.port for p in plan(_sims(1, 1), [], free_range)] == [first, first + 1]
    with socket.create_server(("127.0.0.1", first)):  # someone else listens on the first port
        plans = plan(_sims(2), [], free_range)
    assert [p.port for p in plans] == [first + 1, last]
    assert all(str(p.port) in p.argv for p in plans)  # the replica is told its port


def test_no_free_port_left_is_a_clear_error(free_range: tuple[int, int]) -> None:
    first, last = free_range
    with socket.create_server(("127.0.0.1", last)), pytest.raises(NoFreePort) as info:
        plan(_sims(3), [], free_range)
    assert str(info.value) == f"no free port in launch_ports {first}-{last} for replica p0-2: every other one is in use"


def test_without_a_range_the_os_picks() -> None:
    ports = [p.port for p in plan(_sims(2), [])]
    assert len(set(ports)) == 2 and all(1024 <= p <= 65535 for p in ports)
