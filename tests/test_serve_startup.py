"""`gateway serve` that cannot start says why in one line, `gateway: error: <what> (<hint>)`, and exits 1."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from router.policy import default_policy_dir


def serve(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """`gateway serve --config` with these settings (and a free port, a state_dir of its own)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = {"state_dir": str(tmp_path / "state"), "port": str(port), **settings}
    config = tmp_path / "gateway.yaml"
    config.write_text("".join(f"{key}: {value}\n" for key, value in settings.items()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)


def the_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line; nothing of a traceback anywhere."""
    assert result.returncode == 1, result.stderr
    for marker in ("Traceback", "ExceptionGroup", "Exception Group", "ERROR", "startup failed"):
        assert marker not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("gateway: error: ") and errors[0].endswith(")")
    return errors[0]


def test_an_unmigrated_database(tmp_path: Path, pg_database: str) -> None:
    line = the_error(serve(tmp_path, database_url=pg_database))
    assert line.endswith(" is not migrated (run `gateway db upgrade`)")
    assert "the accounting database postgresql" in line


def test_a_bad_policy(tmp_path: Path) -> None:
    policies = Path(shutil.copytree(default_policy_dir(), tmp_path / "policies"))
    (policies / "routing.yaml").write_text("rules:\n  - name: x\n    match: {tier: high}\n")
    line = the_error(serve(tmp_path, policies_dir=str(policies)))
    assert f"{policies / 'routing.yaml'}:3: `tier`: expected mapping | null" in line
    assert "`gateway policies check` with the same settings" in line


def test_a_bad_price_file(tmp_path: Path) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text("currency: USD\nmodels: [\n")
    line = the_error(serve(tmp_path, prices_file=str(prices)))
    assert line.startswith(f"gateway: error: {prices}: not valid YAML") and "line 3" in line


def test_a_database_that_does_not_exist(tmp_path: Path, pg_database: str) -> None:
    missing = pg_database.rsplit("/", 1)[0] + "/gwtest_never_created"
    line = the_error(serve(tmp_path, database_url=missing))
    assert line == ('gateway: error: the accounting database refused: database "gwtest_never_created" does not '
                    "exist (check database_url)")


def test_a_port_in_use(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        line = the_error(serve(tmp_path, port=str(port)))
    assert line == (f"gateway: error: cannot listen on 127.0.0.1:{port}: Address already in use (another process "
                    "may have it: stop it or choose another --port)")


def test_bad_settings(tmp_path: Path) -> None:
    result = serve(tmp_path, port="eighty")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"gateway: error: invalid settings (in {tmp_path / 'gateway.yaml'}): ")


async def test_the_guard_steps_aside_once_the_app_has_started() -> None:
    import httpx
    import uvicorn

    from gateway.commands.startup import guard_startup

    started = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
                started.set()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"served"})

    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="on", log_level="warning", proxy_headers=False)  # as `serve` has it
    guard = guard_startup(config)
    assert config.loaded_app is guard
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await asyncio.wait_for(started.wait(), 10)
        assert config.loaded_app is guard.app is app  # from now on requests skip the guard
        assert guard.failure is None and not guard.refused
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{sock.getsockname()[1]}/")
        assert response.text == "served"
    finally:
        server.should_exit = True
        await task
