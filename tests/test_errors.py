"""router/errors.py is the one error tree and gateway/errors.py renders it: every error a client can get has its
HTTP status and OpenAI error type, and comes out in OpenAI's envelope with that status and its headers.

Pure: a bare Litestar app with the gateway's exception handlers, served in process.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import pytest
from litestar import Litestar, get
from litestar.testing import TestClient

import gateway
import router
import workers
from gateway.errors import EXCEPTION_HANDLERS
from router import errors
from router.errors import GatewayError, PolicyError

pytestmark = pytest.mark.pure

OPENAI_TYPES = {
    "invalid_request_error", "permission_error", "requests", "tokens", "insufficient_quota", "server_error",
    "service_unavailable_error", "timeout_error", "upstream_error",
}


def _subclasses(cls: type[GatewayError]) -> list[type[GatewayError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def _all_modules() -> None:
    """Import every module of the gateway's packages, so that an error class defined anywhere is known."""
    for package in (router, workers, gateway):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(info.name)


def _raise(error: GatewayError) -> Any:
    @get("/boom", sync_to_thread=False)
    def boom() -> None:
        raise error

    return boom


def test_every_error_class_lives_in_the_one_tree() -> None:
    _all_modules()
    elsewhere = [f"{c.__module__}.{c.__name__}" for c in _subclasses(GatewayError) if c.__module__ != errors.__name__]
    assert not elsewhere, f"GatewayError subclasses outside router/errors.py: {elsewhere}"


@pytest.mark.parametrize("cls", [c for c in _subclasses(GatewayError) if not c.__subclasses__()],
                         ids=lambda c: c.__name__)
def test_each_error_a_client_can_get_has_its_status_type_and_code(cls: type[GatewayError]) -> None:
    own = vars(cls)
    assert isinstance(own.get("status"), int) and 400 <= own["status"] < 600
    assert own.get("type") in OPENAI_TYPES
    assert isinstance(own.get("code"), str) and own["code"]


@pytest.mark.parametrize("cls", [GatewayError, *_subclasses(GatewayError)], ids=lambda c: c.__name__)
def test_each_error_renders_in_the_envelope_with_its_status(cls: type[GatewayError]) -> None:
    if cls is PolicyError:
        error: GatewayError = PolicyError(["routing.yaml:3: unknown model `x`"])
    else:
        error = cls("Something is wrong.", param="model", headers={"retry-after": "2"})
    app = Litestar([_raise(error)], exception_handlers=EXCEPTION_HANDLERS, openapi_config=None, logging_config=None)
    with TestClient(app) as client:
        answer = client.get("/boom", headers={"x-request-id": "req-1"})
    assert answer.status_code == cls.status
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.headers["x-request-id"] == "req-1"
    assert answer.json() == {"error": {"message": error.message, "type": cls.type, "param": error.param,
                                       "code": cls.code}}
    if cls is not PolicyError:
        assert answer.headers["retry-after"] == "2"
