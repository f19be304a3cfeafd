"""Configuration of the vLLM *simulator* (a fake vLLM 0.32 server for tests and benchmarks).

Nothing here talks to a GPU or loads model weights: the simulator only imitates the HTTP
surface, the latency and the metrics of a real vLLM 0.32 OpenAI-compatible server.
"""

from __future__ import annotations

import math
import os
from typing import Annotated

import msgspec
from msgspec import Meta

__all__ = ["FIXED_CREATED_ENV", "Faults", "SimConfig"]

#: Environment variable read by :meth:`SimConfig.resolved_created` when
#: ``SimConfig.fixed_created`` is None: an integer used as every response's ``created``.
FIXED_CREATED_ENV = "VLLM_SIM_FIXED_CREATED"


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be within [0, 1], got {value}")


class Faults(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Failure injection knobs of a running simulator (``GET``/``POST /sim/faults``).

    Rates are probabilities per generation request (chat / completions); 0 never and 1
    always fires (no randomness involved), anything in between draws from the simulator's
    seeded PRNG.
    """

    #: Probability of answering ``status`` with a vLLM-style error envelope before any byte.
    error_rate: float = 0.0
    #: Probability of sleeping ``stall_ms`` before the first byte (headers included).
    stall_rate: float = 0.0
    #: Length of an injected stall, milliseconds.
    stall_ms: float = 2000.0
    #: Probability of dying mid-response: the connection is closed abruptly after
    #: ``die_after_tokens`` output tokens, without the terminating chunk / full body.
    die_rate: float = 0.0
    #: Output tokens sent before an injected death (capped to the response's tokens - 1).
    die_after_tokens: int = 4
    #: HTTP status of injected errors.
    status: int = 500
    #: HTTP status answered by ``GET /health`` (200 = healthy; e.g. 503 to fail health checks).
    health_status: int = 200

    def __post_init__(self) -> None:
        _check_rate("error_rate", self.error_rate)
        _check_rate("stall_rate", self.stall_rate)
        _check_rate("die_rate", self.die_rate)
        if self.stall_ms < 0:
            raise ValueError(f"stall_ms must be >= 0, got {self.stall_ms}")
        if self.die_after_tokens < 0:
            raise ValueError(f"die_after_tokens must be >= 0, got {self.die_after_tokens}")
        if not 400 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {self.status}")
        if not 100 <= self.health_status <= 599:
            raise ValueError(f"health_status must be an HTTP status, got {self.health_status}")


class SimConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Static configuration of one simulated vLLM worker (one model).

    Latency model: a request admitted to a running slot gets its first token after
    ``ttft_ms + prompt_token_us * prompt_tokens / 1000`` ms, then one token every
    ``output_token_ms`` ms.  The defaults are small so that tests stay fast: 5 ms TTFT,
    2 us per prompt token, 0.2 ms per output token (a 100-token answer takes ~25 ms).

    Each field's description is also the help of its command-line flag (``vllm_sim.cli``).
    """

    model: Annotated[str, Meta(description="served model name (the only name `model` may take in requests)")] = (
        "sim-model"
    )
    max_model_len: Annotated[int, Meta(description=(
        "context window in tokens: prompt + output tokens may not exceed it"
    ))] = 1024
    model_root: Annotated[str | None, Meta(description=(
        "'root' of the model in /v1/models (vLLM shows the weights path); default: the model name"
    ))] = None
    ttft_ms: Annotated[float, Meta(description="constant part of the time to first token, milliseconds")] = 5.0
    prompt_token_us: Annotated[float, Meta(description=(
        "prefill time per prompt token, microseconds (added to the TTFT)"
    ))] = 2.0
    output_token_ms: Annotated[float, Meta(description="time per output token after the first, milliseconds")] = 0.2
    max_running: Annotated[int, Meta(description=(
        "requests generating at once (vLLM's max_num_seqs); others wait in a FIFO queue"
    ))] = 64
    max_waiting: Annotated[int, Meta(description=(
        "requests allowed to wait for a running slot; one more is answered 503"
    ))] = 512
    max_n_sequences: Annotated[int, Meta(description=(
        "most sequences one request may ask for: its n, and its prompts x n (vLLM's VLLM_MAX_N_SEQUENCES, 16384, "
        "bounds n alone; lower here, since the simulator holds every choice's text until it answers)"
    ))] = 1024
    max_completion_prompts: Annotated[int, Meta(description=(
        "most prompts in one /v1/completions request (vLLM's VLLM_MAX_COMPLETION_PROMPTS)"
    ))] = 1024
    kv_cache_tokens: Annotated[int, Meta(description=(
        "simulated KV-cache capacity in tokens (for vllm:kv_cache_usage_perc); 0 = max_model_len * max_running"
    ))] = 0
    prefix_cache_blocks: Annotated[int, Meta(description=(
        "simulated automatic prefix caching: how many 256-character prompt blocks it remembers (LRU); the cached "
        "part of a prompt costs no prefill time; 0 = off"
    ))] = 0
    mean_output_tokens: Annotated[int, Meta(description=(
        "if > 0 the text ends by itself (finish_reason stop, like an EOS) after a length drawn deterministically "
        "from [mean/2, 3*mean/2]; 0 = every request runs to max_tokens (finish_reason length)"
    ))] = 0
    non_text_part_tokens: Annotated[int, Meta(description=(
        "prompt tokens charged for each non-text chat content part (image, audio, ...)"
    ))] = 64
    seed: Annotated[int, Meta(description=(
        "server seed: picks the generated text when a request has no seed, and seeds the failure-injection PRNG"
    ))] = 0
    fixed_created: Annotated[int | None, Meta(description=(
        "constant 'created' timestamp of every response (byte-identical responses in tests); "
        f"default: env {FIXED_CREATED_ENV} if set, else the current time"
    ))] = None
    # Initial failure injection (see Faults; changeable at run time through /sim/faults).
    error_rate: Annotated[float, Meta(description=(
        "probability of answering a generation request with an injected error"
    ))] = 0.0
    error_status: Annotated[int, Meta(description="HTTP status of injected errors")] = 500
    stall_rate: Annotated[float, Meta(description="probability of stalling before the first byte")] = 0.0
    stall_ms: Annotated[float, Meta(description="length of an injected stall, milliseconds")] = 2000.0
    die_rate: Annotated[float, Meta(description="probability of dropping the connection mid-response")] = 0.0
    die_after_tokens: Annotated[int, Meta(description="output tokens sent before an injected death")] = 4
    # Hidden ground truth of answer quality (vllm_sim/truth.py), for testing learned routing.
    ability: Annotated[float | None, Meta(description=(
        "simulated model quality in [0, 1]: every answer starts with '[ok] ' or '[poor] ', decided "
        "deterministically by a hidden truth of prompt difficulty from the last user message (chat) or the "
        "prompt (completions) and this ability; default: no quality markers"
    ))] = None
    truth_seed: Annotated[int, Meta(description=(
        "key of the hidden truth (a signed 64-bit integer): which prompts are hard, which answers succeed; "
        "simulators sharing it agree on every prompt's difficulty"
    ))] = 0
    truth_sharpness: Annotated[float, Meta(description=(
        "steepness of P(acceptable) = logistic(truth_sharpness * (ability - difficulty)); > 0"
    ))] = 12.0
    judge: Annotated[bool, Meta(description=(
        "judge mode: a chat whose last user message holds <answer_a>...</answer_a> and <answer_b>...</answer_b> "
        'is answered {"a": A, "b": B}, each score 10 for an answer carrying [ok], 0 for [poor], 5 for neither'
    ))] = False

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must not be empty")
        if self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        for name in ("ttft_ms", "prompt_token_us", "output_token_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_running < 1:
            raise ValueError(f"max_running must be >= 1, got {self.max_running}")
        if self.max_n_sequences < 1 or self.max_completion_prompts < 1:
            raise ValueError("max_n_sequences and max_completion_prompts must be >= 1")
        if self.max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {self.max_waiting}")
        if self.prefix_cache_blocks < 0:
            raise ValueError("prefix_cache_blocks must be >= 0")
        if self.kv_cache_tokens < 0 or self.mean_output_tokens < 0 or self.non_text_part_tokens < 0:
            raise ValueError("kv_cache_tokens, mean_output_tokens and non_text_part_tokens must be >= 0")
        self.initial_faults()  # validates the fault fields
        if self.ability is not None and not 0.0 <= self.ability <= 1.0:
            raise ValueError(f"ability must be within [0, 1], got {self.ability}")
        if not -(2**63) <= self.truth_seed < 2**63:
            raise ValueError(f"truth_seed must be a signed 64-bit integer, got {self.truth_seed}")
        if not (self.truth_sharpness > 0 and math.isfinite(self.truth_sharpness)):
            raise ValueError(f"truth_sharpness must be > 0 and finite, got {self.truth_sharpness}")

    def initial_faults(self) -> Faults:
        """The :class:`Faults` a fresh simulator starts with."""
        return Faults(
            error_rate=self.error_rate,
            stall_rate=self.stall_rate,
            stall_ms=self.stall_ms,
            die_rate=self.die_rate,
            die_after_tokens=self.die_after_tokens,
            status=self.error_status,
        )

    def resolved_created(self) -> int | None:
        """``fixed_created``, else the ``VLLM_SIM_FIXED_CREATED`` env value, else None."""
        if self.fixed_created is not None:
            return self.fixed_created
        env = os.environ.get(FIXED_CREATED_ENV)
        return int(env) if env else None

    def kv_capacity(self) -> int:
        return self.kv_cache_tokens or self.max_model_len * self.max_running
