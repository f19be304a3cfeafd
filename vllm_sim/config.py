"""Configuration of the vLLM *simulator* (a fake vLLM 0.32 server for tests and benchmarks).

Nothing here talks to a GPU or loads model weights: the simulator only imitates the HTTP
surface, the latency and the metrics of a real vLLM 0.32 OpenAI-compatible server.
"""

from __future__ import annotations

import math
import os

import msgspec

__all__ = ["FIXED_CREATED_ENV", "Faults", "SimConfig"]

#: Environment variable read by :func:`vllm_sim.app.create_sim_app` when
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
    """

    #: Served model name (the only name ``model`` may take in requests).
    model: str = "sim-model"
    #: Context window: prompt + output tokens may not exceed it.
    max_model_len: int = 1024
    #: ``root`` of the model in ``/v1/models`` (vLLM shows the weights path); None = ``model``.
    model_root: str | None = None
    #: Constant part of the time to first token, milliseconds.
    ttft_ms: float = 5.0
    #: Prefill cost per prompt token, microseconds (added to the TTFT).
    prompt_token_us: float = 2.0
    #: Time per output token after the first, milliseconds.
    output_token_ms: float = 0.2
    #: Requests generating at once (vLLM ``max_num_seqs``); others wait in a FIFO queue.
    max_running: int = 64
    #: Requests allowed to wait for a running slot; one more is answered 503.
    max_waiting: int = 512
    #: Simulated KV-cache capacity in tokens (for ``vllm:kv_cache_usage_perc``);
    #: 0 = ``max_model_len * max_running``.
    kv_cache_tokens: int = 0
    #: Simulated prefix cache (vLLM's automatic prefix caching): how many 256-character prompt
    #: blocks it remembers (LRU); the cached part of a prompt costs no prefill time. 0 = off.
    prefix_cache_blocks: int = 0
    #: If > 0, the simulated text "ends" (finish_reason ``stop``, like an EOS) after a
    #: length drawn deterministically from [mean/2, 3*mean/2]; 0 = it never ends by itself
    #: so requests always run to ``max_tokens`` (finish_reason ``length``).
    mean_output_tokens: int = 0
    #: Prompt tokens charged for each non-text chat content part (image, audio, ...).
    non_text_part_tokens: int = 64
    #: Server seed: picks the generated text when a request has no ``seed`` and seeds the
    #: failure-injection PRNG.
    seed: int = 0
    #: Fixed ``created`` timestamp for every response (byte-identical responses in tests);
    #: None = env ``VLLM_SIM_FIXED_CREATED`` if set, else the current time.
    fixed_created: int | None = None
    # Initial failure injection (see :class:`Faults`; changeable at run time).
    error_rate: float = 0.0
    error_status: int = 500
    stall_rate: float = 0.0
    stall_ms: float = 2000.0
    die_rate: float = 0.0
    die_after_tokens: int = 4
    # Hidden ground truth of answer quality (vllm_sim/truth.py), for testing learned routing.
    #: Simulated model quality in [0, 1]: every answer starts with ``[ok] `` or ``[poor] ``, decided
    #: deterministically from the last user message (chat) or the prompt (completions) and this
    #: ability.  None = no quality model: the text is exactly as without these fields.
    ability: float | None = None
    #: Key of the hidden truth (which words are hard, which answers succeed); a signed 64-bit integer.
    #: Simulators sharing it agree on every prompt's difficulty.
    truth_seed: int = 0
    #: Steepness of P(acceptable) = logistic(truth_sharpness * (ability - difficulty)); > 0.
    truth_sharpness: float = 12.0
    #: Judge mode: a chat whose last user message holds ``<answer_a>...</answer_a>`` and
    #: ``<answer_b>...</answer_b>`` is answered ``{"a": A, "b": B}``, each score 10 for an answer
    #: carrying ``[ok]``, 0 for ``[poor]``, 5 for neither.
    judge: bool = False

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
