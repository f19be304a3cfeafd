"""A generation request (chat or completions) from body to last byte: validation, injected
faults, the generated text, admission to a running slot, the latency model, the response
(JSON or SSE) and the counters, with the client's disconnect cancelling the work."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from typing import Any

from vllm_sim.asgi import (
    JSON_HEADERS,
    Ctl,
    Receive,
    Send,
    SimulatedDeath,
    read_body,
    respond,
    run_cancellable,
)
from vllm_sim.config import SimConfig
from vllm_sim.judge import verdict
from vllm_sim.responses import completion_body
from vllm_sim.scheduling import Live, Overloaded
from vllm_sim.sse import SSE_HEADERS, SSEEncoder
from vllm_sim.state import SimState
from vllm_sim.text import Generated, count_tokens, generate, last_user_text
from vllm_sim.translated import Encoder, Translation
from vllm_sim.truth import OK_MARKER, POOR_MARKER, acceptable
from vllm_sim.validation import (
    GenRequest,
    HTTPError,
    Prompt,
    check_fan_out,
    check_lengths,
    decode_body,
    error_body,
    error_type,
    parse_gen_request,
)

__all__ = ["handle_generation"]

_OFFLOAD_CHARS = 65536  # tokenize prompts longer than this in a worker thread
_MAX_STEPS_PER_WRITE = 64


async def handle_generation(
    state: SimState, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]], *, chat: bool,
    api: Callable[[dict[str, Any], str], Translation] | None = None,
) -> None:
    """Answer a ``/v1/chat/completions`` (``chat``) or ``/v1/completions`` request; with ``api``, a call of
    another API answered as a chat in its own shape (vllm_sim/translated.py)."""
    loop = asyncio.get_running_loop()
    arrival = loop.time()
    state.metrics.received += 1
    cfg = state.config
    header_rid = extra[0][1] if extra else None
    if header_rid is None:
        extra = [(b"x-request-id", os.urandom(16).hex().encode())]
    raw = await read_body(receive)
    call: Translation | None = None
    try:
        body = decode_body(raw)
        if api is not None:
            call = api(body, cfg.model)
            body = call.chat
        req = parse_gen_request(body, chat, cfg.model)
        check_fan_out(req, cfg.max_n_sequences, cfg.max_completion_prompts)  # before any work per sequence
        await _count_prompt_tokens(req, cfg.non_text_part_tokens)
        max_tokens = check_lengths(req, cfg.max_model_len)
    except HTTPError as exc:
        if call is not None:
            exc = call.error(exc)
        await respond(send, exc.status, exc.body, JSON_HEADERS, extra)
        return

    faults = state.faults
    if state.fires(faults.error_rate):
        state.metrics.injected["error"] += 1
        status = faults.status
        msg = f"Simulated failure injected by vllm-sim (error_rate={faults.error_rate})."
        failure = HTTPError(status, error_body(msg, error_type(status), None, status))
        if call is not None:
            failure = call.error(failure)
        await respond(send, status, failure.body, JSON_HEADERS, extra)
        return
    stall_s = faults.stall_ms / 1000.0 if state.fires(faults.stall_rate) else 0.0
    die_after = faults.die_after_tokens if state.fires(faults.die_rate) else None

    prefix = b"chatcmpl-" if chat else b"cmpl-"
    if call is not None:
        rid = call.id(header_rid)
    elif header_rid is not None:
        rid = prefix + hashlib.blake2b(prefix + header_rid, digest_size=8).hexdigest().encode()
    else:
        rid = prefix + os.urandom(8).hex().encode()
    seed = req.seed if req.seed is not None else cfg.seed
    gens: list[Generated] = []
    for prompt, mt in zip(req.prompts, max_tokens, strict=True):
        lead, lead_ends = _lead(cfg, prompt)
        for j in range(req.n):
            gens.append(
                generate(
                    prompt.key,
                    seed=seed,
                    choice=j,
                    max_tokens=mt,
                    mean_output_tokens=cfg.mean_output_tokens,
                    min_tokens=req.min_tokens,
                    ignore_eos=req.ignore_eos,
                    stop=req.stop,
                    include_stop_str_in_output=req.include_stop,
                    lead=lead,
                    lead_ends=lead_ends,
                )
            )
    prompt_tokens = sum(p.tokens for p in req.prompts)
    cached = sum(state.prefix_cache.lookup(p.text or p.key, p.tokens) for p in req.prompts)
    state.metrics.prefix_queries += prompt_tokens
    state.metrics.prefix_hits += cached

    async def work(ctl: Ctl) -> None:
        await _serve(state, send, ctl, extra, req, rid, gens, prompt_tokens, cached, arrival, stall_s, die_after, call)

    if await run_cancellable(receive, work):
        state.metrics.cancelled += 1


def _lead(cfg: SimConfig, prompt: Prompt) -> tuple[str, bool]:
    """What an answer starts with: a judge's whole verdict (True), a quality marker, or nothing."""
    if cfg.ability is None and not cfg.judge:
        return "", False
    user = last_user_text(prompt.messages) if prompt.messages is not None else None
    if cfg.judge and user is not None:
        reply = verdict(user)
        if reply is not None:
            return reply, True
    if cfg.ability is None:
        return "", False
    # a prompt given as token ids is judged on its ids written out ("1,2,3")
    text = user if user is not None else (prompt.text or prompt.key)
    ok = acceptable(text, cfg.model, cfg.ability, cfg.truth_seed, cfg.truth_sharpness)
    return (OK_MARKER if ok else POOR_MARKER), False


async def _count_prompt_tokens(req: GenRequest, non_text_part_tokens: int) -> None:
    for p in req.prompts:
        if p.text is None:
            continue
        if len(p.text) > _OFFLOAD_CHARS:
            p.tokens = await asyncio.to_thread(count_tokens, p.text)
        else:
            p.tokens = count_tokens(p.text)
        p.tokens += p.non_text_parts * non_text_part_tokens


async def _serve(
    state: SimState,
    send: Send,
    ctl: Ctl,
    extra: list[tuple[bytes, bytes]],
    req: GenRequest,
    rid: bytes,
    gens: list[Generated],
    prompt_tokens: int,
    cached_tokens: int,  # of which found in the prefix cache: no prefill time
    arrival: float,
    stall_s: float,
    die_after: int | None,
    call: Translation | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    m = state.metrics
    slots = state.slots
    if stall_s > 0:
        m.injected["stall"] += 1
        await asyncio.sleep(stall_s)
    try:
        fut = slots.try_enter()
    except Overloaded:
        m.rejected += 1
        ctl.done = True
        msg = (
            f"The server is overloaded: the waiting queue is full (max_num_queued_reqs="
            f"{slots.max_waiting}). Please retry later."
        )
        overloaded = HTTPError(503, error_body(msg, "ServiceUnavailableError", None, 503))
        if call is not None:
            overloaded = call.error(overloaded)
        await respond(send, 503, overloaded.body, JSON_HEADERS, extra)
        return
    held = fut is None
    live: Live | None = None
    steps = max(len(g.texts) for g in gens)
    completion_tokens = sum(len(g.texts) for g in gens)
    sent_steps = 0
    try:
        if req.stream:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + extra})
        if fut is not None:
            try:
                await fut
            except asyncio.CancelledError:
                slots.abandon(fut)
                raise
            held = True
        admitted = loop.time()
        m.queue.observe(admitted - arrival)
        tok_s = state.output_token_s
        t_first = admitted + state.ttft_s + state.prompt_token_s * (prompt_tokens - cached_tokens)
        live = Live(prompt_tokens, completion_tokens, t_first, tok_s)
        state.live.add(live)
        die_at = None if die_after is None else min(die_after, steps - 1)
        created = state.created()
        if req.stream:
            sse: Encoder = (SSEEncoder(req.chat, rid, created, state.model_json, req.include_usage) if call is None
                            else call.encoder(rid, created, state.config.model, prompt_tokens))
            s = 0
            end = steps if die_at is None else die_at
            first = True
            while s < end or first:
                target = t_first + s * tok_s
                delay = target - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if first:
                    m.ttft.observe(loop.time() - arrival)
                    first = False
                # max(0, ...): the event loop may wake a little before `target`.
                upto = s + 1 + max(0, int((loop.time() - target) / tok_s)) if tok_s > 0 else end
                upto = min(upto, end, s + _MAX_STEPS_PER_WRITE)
                parts = sse.steps(gens, s, upto)
                s = sent_steps = upto
                if s >= steps:
                    parts.append(sse.tail(prompt_tokens, completion_tokens))
                    ctl.done = True
                    await send({"type": "http.response.body", "body": b"".join(parts), "more_body": False})
                    break
                await send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})
                if delay <= 0:
                    await asyncio.sleep(0)  # behind schedule: still let others run
            else:
                # die_at reached (only way out of the loop without completing)
                _record_die(state, live, sent_steps, gens)
                raise SimulatedDeath(f"vllm-sim: injected death after {sent_steps} tokens")
        else:
            model = state.config.model
            body = (completion_body(req.chat, rid, created, model, gens, prompt_tokens, completion_tokens)
                    if call is None else call.body(rid, created, model, gens[0], prompt_tokens, completion_tokens))
            finish_at = t_first + (steps - 1 if die_at is None else die_at) * tok_s
            delay = finish_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            m.ttft.observe(t_first - arrival)
            headers = [(b"content-length", str(len(body)).encode()), *JSON_HEADERS, *extra]
            if die_at is not None:
                _record_die(state, live, die_at, gens)
                ctl.done = True
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
                raise SimulatedDeath(f"vllm-sim: injected death after {die_at} tokens")
            ctl.done = True
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
        # success accounting
        m.prompt_tokens += prompt_tokens
        m.generation_tokens += completion_tokens
        for g in gens:
            m.success[g.finish_reason] += 1
        m.e2e.observe(loop.time() - arrival)
        m.req_prompt.observe(prompt_tokens)
        m.req_generation.observe(completion_tokens)
    except asyncio.CancelledError:
        if live is not None:
            now = loop.time()
            if now >= live.t_first:
                m.prompt_tokens += prompt_tokens
            emitted = sent_steps if req.stream else min(steps, live.tokens_at(now))
            m.generation_tokens += sum(min(emitted, len(g.texts)) for g in gens)
            m.success["abort"] += 1
        raise
    finally:
        if held:
            slots.release()
        if live is not None:
            state.live.discard(live)


def _record_die(state: SimState, live: Live, steps_sent: int, gens: list[Generated]) -> None:
    m = state.metrics
    m.injected["die"] += 1
    m.prompt_tokens += live.prompt_tokens
    m.generation_tokens += sum(min(steps_sent, len(g.texts)) for g in gens)
