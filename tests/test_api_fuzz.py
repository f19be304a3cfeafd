"""The OpenAPI document served to admins, and schemathesis over every endpoint it describes.

One gateway in this process (tests/inprocess_gateway.py, served by uvicorn over loopback as `gateway serve`
serves it), on a throwaway PostgreSQL database and the real Redis (under a key prefix of its own), with
simulated workers fast enough for a fuzz: the fuzz may create keys and set team limits at will. Every
operation of `GET /admin/openapi.json` is fuzzed as an admin, and the inference endpoints also with an `app`
key that has rate limits and a budget (the limits' reservation sees the fuzzed bodies). The bar: no 5xx, and
answers that conform to the document (status, media type, body).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import BaseSchema

from gateway.api.openapi import PATH, CompletedJson, complete
from gateway.app import create_app
from gateway.auth import store
from gateway.auth.keys import new_key
from gateway.settings import load_settings
from tests.auth_support import bearer
from tests.gateway_process import DEV_KEY
from tests.inprocess_gateway import InProcessGateway
from tests.limits_support import delete_prefix, require_redis, unique_prefix
from tests.pg_support import create_pg_database, drop_pg_database
from tests.services import redis_url

# Workers that answer at once, with small context windows: a fuzzed `max_tokens` is either refused by the
# worker or generated in milliseconds.
FAST_SIM = ("--ttft-ms", "0", "--output-token-ms", "0", "--prompt-token-us", "0")
POOLS = [
    {"name": "small", "model": "demo-small", "launch": {"args": [*FAST_SIM, "--max-model-len", "1024"]}},
    {"name": "large", "model": "demo-large", "launch": {"args": [*FAST_SIM, "--max-model-len", "2048"]}},
]
INFERENCE = "^/v1/(chat/)?completions$"
# Checks of every answer: no 5xx, and the status, media type and body the document gives for it.
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance",
          "response_headers_conformance", "negative_data_rejection", "ignored_auth", "unsupported_method",
          "missing_required_header")
EXAMPLES = 50  # per operation and per kind of data (valid, invalid); the module runs in about 1.5 min on 2 cores


class Fuzzed:
    def __init__(self, gw: InProcessGateway, app_key: str) -> None:
        self.gw = gw
        self.app_key = app_key


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    require_redis()
    database = asyncio.run(create_pg_database())
    prefix = unique_prefix()
    config = {
        "database_url": database, "auto_migrate": True, "redis_url": redis_url(), "pools": POOLS,
        "limits_key_prefix": prefix + "limits:", "cache_key_prefix": prefix + "cache:",
        "feedback_key_prefix": prefix + "feedback:", "recorder_flush_interval_s": 0.05,
    }
    gw = InProcessGateway(tmp_path_factory.mktemp("fuzz"), config).start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(store, "new_key", lambda: APP_KEY)
            made = httpx.post(gw.base_url + "/admin/keys", headers=gw.auth, json={
                "tenant": "fuzz", "team": "apps", "role": "app", "rpm": 1_000_000, "tpm": 1_000_000_000,
                "budget": "1000000"})
        assert made.status_code == 201 and made.json()["key"] == APP_KEY, made.text
        yield Fuzzed(gw, APP_KEY)
    finally:
        gw.stop()
        delete_prefix(prefix)
        asyncio.run(drop_pg_database(database))


def _document() -> dict[str, Any]:
    """The document as the app builds it (no lifespan, nothing started): schemathesis makes one test per
    operation when this module is collected; test_the_served_document_is_the_one_fuzzed checks the served one."""
    with tempfile.TemporaryDirectory() as state_dir:  # building the app writes the server secret there
        app = create_app(load_settings(env={}, overrides={"state_dir": state_dir, "pools": POOLS}))
        return complete(app, app.openapi_schema.to_schema())


# The keys the fuzz calls with, known when schemathesis builds its tests at collection: the development
# key (role admin) and an `app` key the `fuzzed` fixture creates with this value.
APP_KEY = new_key()
KEYS = {"admin": DEV_KEY, "app": APP_KEY}


def _fuzzer(role: str, path_regex: str | None = None) -> BaseSchema:
    """Schemathesis over the document, calling with the key of `role` (as an auth provider, so that the
    `ignored_auth` check can take it away and expect 401)."""
    schema: BaseSchema = schemathesis.openapi.from_dict(_document(), config=schemathesis.Config.from_dict({
        "seed": 20,
        "generation": {"max-examples": EXAMPLES, "mode": "all"},
        "phases": {"stateful": {"enabled": False}},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
    }))
    if path_regex is not None:
        schema = schema.include(path_regex=path_regex)

    @schema.auth()
    class Key:
        def get(self, case: schemathesis.Case, ctx: schemathesis.AuthContext) -> str:
            return KEYS[role]

        def set(self, case: schemathesis.Case, data: str, ctx: schemathesis.AuthContext) -> None:
            # Spelled as the security scheme's header, so that the check's probe can take it away.
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    return schema


AS_ADMIN = _fuzzer("admin")
AS_APP = _fuzzer("app", INFERENCE)
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), database=None)


@FUZZ
@AS_ADMIN.parametrize()
def test_every_endpoint_as_admin(case: schemathesis.Case, fuzzed: Fuzzed) -> None:
    case.call_and_validate(base_url=fuzzed.gw.base_url, timeout=30)


@FUZZ
@AS_APP.parametrize()
def test_inference_as_app_key(case: schemathesis.Case, fuzzed: Fuzzed) -> None:
    case.call_and_validate(base_url=fuzzed.gw.base_url, timeout=30)


def test_405_names_the_allowed_methods(fuzzed: Fuzzed) -> None:
    for method, path, allowed in (("GET", "/v1/chat/completions", "POST"), ("DELETE", "/admin/keys", "GET"),
                                  ("TRACE", "/v1/models", "GET")):
        r = httpx.request(method, fuzzed.gw.base_url + path, headers=fuzzed.gw.auth)
        assert (r.status_code, r.json()["error"]["code"]) == (405, "method_not_allowed")
        assert allowed in r.headers["allow"].split(", "), (method, path, r.headers.get("allow"))


def test_values_postgresql_cannot_hold_are_400s(fuzzed: Fuzzed) -> None:
    """A NUL character reaches no query: a tenant filter is checked as a name; elsewhere the database's refusal
    of a value is the client's 400, not a 500 (both found by the fuzz)."""
    base, auth = fuzzed.gw.base_url, fuzzed.gw.auth
    for path in ("/admin/keys", "/admin/teams"):
        r = httpx.get(base + path, headers=auth, params={"tenant": "a\x00b"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tenant", r.text
    r = httpx.post(base + "/admin/keys/key_%00/revoke", headers=auth)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_value"), r.text


def test_the_served_document_is_the_one_fuzzed(fuzzed: Fuzzed) -> None:
    served = httpx.get(fuzzed.gw.base_url + PATH, headers=fuzzed.gw.auth).json()
    assert served == _document()


def test_the_document_is_for_admins_only(fuzzed: Fuzzed) -> None:
    url = fuzzed.gw.base_url + PATH
    assert httpx.get(url).json()["error"]["code"] == "missing_api_key"
    refused = httpx.get(url, headers=bearer(fuzzed.app_key))
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "insufficient_permissions")
    served = httpx.get(url, headers=fuzzed.gw.auth)
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("application/vnd.oai.openapi+json")
    assert served.json()["openapi"].startswith("3.1")


def test_the_document_describes_the_real_api(fuzzed: Fuzzed) -> None:
    doc: dict[str, Any] = httpx.get(fuzzed.gw.base_url + PATH, headers=fuzzed.gw.auth).json()
    operations = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert operations == {
        ("/v1/chat/completions", "post"), ("/v1/completions", "post"), ("/v1/responses", "post"),
        ("/v1/responses/{response_id}", "get"), ("/v1/responses/{response_id}/cancel", "post"),
        ("/v1/messages", "post"), ("/v1/embeddings", "post"), ("/tokenize", "post"), ("/detokenize", "post"),
        ("/v1/score", "post"), ("/score", "post"), ("/v1/rerank", "post"), ("/rerank", "post"),
        ("/v2/rerank", "post"), ("/v1/models", "get"),
        ("/v1/models/{model}", "get"),
        ("/v1/feedback", "post"), ("/v1/reports/usage", "get"), ("/v1/reports/budgets", "get"),
        ("/v1/reports/invoice", "get"), ("/v1/reports/overview", "get"),
        ("/admin/keys", "get"), ("/admin/keys", "post"), ("/admin/keys/{key_id}/revoke", "post"),
        ("/admin/teams", "get"), ("/admin/teams/{tenant}/{team}", "put"), ("/admin/workers", "get"),
        ("/admin/policy", "get"), ("/admin/route/explain", "post"), ("/healthz", "get"), ("/readyz", "get"),
        ("/metrics", "get"),
    }
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    body = doc["components"]["schemas"]["ChatFields"]
    assert body["required"] == ["messages"] and body["additionalProperties"] is True
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatFields"}
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    error = {"$ref": "#/components/schemas/Error"}
    # Anthropic's Messages API: the gateway's errors in Anthropic's envelope, a worker's as the worker wrote it.
    either = {"anyOf": [{"$ref": "#/components/schemas/AnthropicError"}, error]}
    for path, item in doc["paths"].items():
        for operation in item.values():
            for status, answer in operation["responses"].items():
                if status in ("4XX", "5XX") or (status.startswith(("4", "5")) and path != "/readyz"):
                    schema = either if path == "/v1/messages" else error
                    assert answer["content"] == {"application/json": {"schema": schema}}, (path, status)
            assert operation["security"] == ([] if path in ("/healthz", "/readyz", "/metrics") else [{"apiKey": []}])
    usage = {p["name"] for p in doc["paths"]["/v1/reports/usage"]["get"]["parameters"]}
    assert usage == {"from", "to", "group_by", "format", "tenant", "team", "key", "model", "route", "operation"}
    assert doc["components"]["schemas"]["KeyRequest"]["required"] == ["tenant", "team", "role"]


def test_the_document_is_built_once_when_first_asked_for(tmp_path: Path) -> None:
    gw = InProcessGateway(tmp_path, {"recorder_flush_interval_s": 0.05}).start()
    try:
        plugin = next(p for p in gw.app.openapi_config.render_plugins if isinstance(p, CompletedJson))
        chat = httpx.post(gw.api + "/chat/completions", headers=gw.auth, json={
            "model": "demo-small", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert chat.status_code == 200
        assert plugin.document is None  # serving and inference calls never build it
        first = httpx.get(gw.base_url + PATH, headers=gw.auth).content
        document = plugin.document
        assert document == first
        assert httpx.get(gw.base_url + PATH, headers=gw.auth).content == first
        assert plugin.document is document  # encoded once, then served as it is
    finally:
        gw.stop()
