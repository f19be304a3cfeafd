"""The `gateway` command."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from gateway.settings import SettingsError, load_settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app

    try:
        settings = load_settings(args.config, overrides={"host": args.host, "port": args.port})
    except SettingsError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health check is noise
    models = ", ".join(("auto", *(p.model for p in settings.pools)))
    # uvicorn re-raises SIGTERM/SIGINT after its clean shutdown; handlers of ours that do nothing let
    # a requested stop end with status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    print(f"gateway: serving http://{settings.host}:{settings.port}/v1 (models: {models})", flush=True)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    return 0


def _sim(argv: list[str]) -> int:
    from workers.simulator.__main__ import main as sim_main

    return sim_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sim"]:
        return _sim(argv[1:])
    parser = argparse.ArgumentParser(prog="gateway", description="LLM routing gateway with cost accounting")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the OpenAI-compatible API")
    serve.add_argument("--config", help="YAML settings file (default: $GATEWAY_CONFIG)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default $GATEWAY_PORT or 8080)")
    sub.add_parser("sim", help="run a vLLM simulator (a fake engine for tests and demos)", add_help=False)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
