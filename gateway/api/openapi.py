"""The OpenAPI document of the HTTP API, served to admins at `GET /admin/openapi.json` (docs/api.md).

Litestar generates it from the route handlers, on the first request for it, and this module completes
it with what Litestar cannot see; the result is encoded once and kept. Nothing here runs per call: the
document is built when an admin first asks for it, never at start or on the inference path.

What the completion adds:
- the inference endpoints (gateway/inference/endpoints.py), raw ASGI handlers Litestar does not describe: their body
  is the fields the gateway reads, and any other field, which reaches the worker untouched;
- the bodies that handlers read themselves (to answer in OpenAI's error shape): a handler names its
  body's msgspec type (a tuple: any one of them), or a JSON Schema, in `opt["request_body"]`, and the
  media types of its answers, when not JSON alone, in `opt["produces"]`;
- OpenAI's error envelope (gateway/errors.py) as every operation's 4XX and 5XX answer;
- the API key, and the roles each path needs (gateway/auth/guard.py's table): open paths need no key;
- no `null` for optional query parameters (absent or a value: a query cannot carry null).
"""

from __future__ import annotations

import copy
from importlib.metadata import version
from typing import Any

import msgspec
from litestar import Litestar, Request
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.routes import HTTPRoute

from gateway.auth.guard import roles_for
from gateway.inference.endpoints import ENDPOINTS, Endpoint

PATH = "/admin/openapi.json"
SCHEMAS = "#/components/schemas/{name}"
ERROR = {"$ref": SCHEMAS.format(name="Error")}
# The envelope of every error the gateway raises, and of the workers' own errors it passes through.
ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type"],
        "properties": {
            "message": {"type": "string"},
            "type": {"type": "string"},
            "param": {"type": ["string", "null"]},
            "code": {"type": ["string", "integer", "null"]},
        },
    }},
}
_ERRORS = {
    "4XX": {"description": "The request was refused; `error.code` says why (docs/api.md#errors).",
            "content": {"application/json": {"schema": ERROR}}},
    "5XX": {"description": "The gateway or a worker failed, or cannot take the call now.",
            "content": {"application/json": {"schema": ERROR}}},
}
# `POST /v1/messages` (Anthropic's SDK reads it): the gateway's own errors in Anthropic's envelope; a worker's
# error passes as the worker wrote it (vLLM's are Anthropic's, but for a body its request model refuses).
ANTHROPIC_ERROR_SCHEMA: dict[str, Any] = {
    "title": "AnthropicError",
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {"type": "object", "required": ["type", "message"], "properties": {
            "type": {"type": "string"}, "message": {"type": "string"}, "details": {"type": ["object", "null"]}}},
        "request_id": {"type": ["string", "null"]},
    },
}
_EITHER = {"anyOf": [{"$ref": SCHEMAS.format(name="AnthropicError")}, ERROR]}
_ANTHROPIC_ERRORS = {
    "4XX": {"description": "The request was refused: Anthropic's envelope, `error.details.error_code` says why "
                           "(docs/api.md#anthropics-messages-api).",
            "content": {"application/json": {"schema": _EITHER}}},
    "5XX": {"description": "The gateway or a worker failed, or cannot take the call now.",
            "content": {"application/json": {"schema": _EITHER}}},
}
# One named server-sent event (the Responses and Messages APIs).
_NAMED_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "description": "An event of the API's stream: `event` its name, `data` its JSON (an `error` event when the "
                   "worker fails mid-stream)",
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
}
_INFERENCE_HEADERS = [
    {"name": "x-request-id", "in": "header", "required": False,
     "description": "The client's id for the call, kept when well-formed (else a new one is given)",
     "schema": {"type": "string"}},
    {"name": "x-gateway-cache", "in": "header", "required": False,
     "description": "`no-store`: no cache lookup or store; `refresh`: skip the lookup, store the new answer",
     "schema": {"type": "string", "enum": ["no-store", "refresh"]}},
]
_ANSWER = {
    "type": "object",
    "description": "The worker's answer, as vLLM produced it (OpenAI's shape)",
    "properties": {"id": {"type": "string"}, "object": {"type": "string"}, "model": {"type": "string"},
                   "choices": {"type": "array"}, "usage": {"type": ["object", "null"]}},
}
_TEXT = {"type": "string"}
# One server-sent event of a stream (before OpenAPI 3.2, a stream's `schema` describes each event).
_EVENT = {
    "type": "object",
    "required": ["data"],
    "description": "A chunk in OpenAI's shape (JSON), or an error; the last event's `data` is `[DONE]`",
    "properties": {"data": {"type": "string"}},
}

# The fields router/request_limits.py checks before routing, beyond the reader's types: their types (the
# maximums are the policy's `defaults.request_limits`, docs/routing-policies.md). Integers and booleans are
# read as vLLM reads them (router/lax.py: `"5"`, `5.0` and `true` are integers, `"yes"` and 1 booleans), so
# their types are the JSON types such values come in; a value that is not one is a 400. Below a minimum, a
# value is the worker's to refuse (docs/api.md).
_LIMITED = "At most the policy's `defaults.request_limits` allow (400 past it)"
_LAX_INT = ["integer", "string", "boolean", "null"]  # "5", " 5 ", "1_000", "5.0", 5.0 and true read as integers
_LAX_BOOL = ["boolean", "integer", "string", "null"]  # 0/1 and "yes"/"no", "on"/"off", "1"/"0", ... read as booleans


def _int(description: str = _LIMITED) -> dict[str, Any]:
    return {"type": _LAX_INT, "description": description}


_TOKEN_IDS = {"type": "array", "items": {"type": "integer"}}
_TOOLS = {"type": ["array", "null"], "items": {"type": "object"}, "description": _LIMITED}
_IGNORED = "vLLM 0.32 ignores it; bounded by the policy's `defaults.request_limits` when it is a number (or a list)"
_COMMON = {"n": _int(), "prompt_logprobs": _int(), "tools": _TOOLS, "functions": {"description": _IGNORED},
           "seed": _int("An integer (vLLM refuses one past 64 bits)"), "stream": {"type": _LAX_BOOL},
           "model": {"type": ["string", "null"], "default": "auto", "description": "A model, an alias or `auto` "
                     "(null, as vLLM reads it, is absent: `auto`)"}}
_BOUNDED: dict[str, dict[str, Any]] = {
    "chat": {
        **_COMMON,
        "messages": {"type": "array", "description": _LIMITED, "items": {
            "type": "object", "required": ["role"], "properties": {
                "role": {"type": "string"},
                "content": {"type": ["string", "array", "null"], "items": {"type": ["object", "string"]}}}}},
        "max_tokens": _int(),
        "max_completion_tokens": _int(),
        "logprobs": {"type": _LAX_BOOL},
        "top_logprobs": _int(),
    },
    "completion": {
        **_COMMON,
        "prompt": {"description": _LIMITED, "anyOf": [  # a prompt, token ids, or a list of either
            {"type": "string"}, _TOKEN_IDS, {"type": "array", "items": {"anyOf": [{"type": "string"}, _TOKEN_IDS]}},
            {"type": "null"},  # with vLLM's `prompt_embeds` instead
        ]},
        "max_tokens": _int(),
        "best_of": {"description": _IGNORED},
        "logprobs": _int(),
    },
    # Another API's shape (gateway/inference/translated.py): its own fields, read and bounded as a chat's.
    "responses": {
        "model": _COMMON["model"], "tools": _TOOLS, "stream": {"type": _LAX_BOOL},
        "input": {"description": f"{_LIMITED} (its items, as messages)", "anyOf": [{"type": "string"},
                                                                                   {"type": "array"}]},
        "max_output_tokens": _int(), "seed": _COMMON["seed"], "top_logprobs": _int(),
        "background": {"type": _LAX_BOOL}, "store": {"type": _LAX_BOOL},
    },
    "messages": {
        "model": _COMMON["model"], "tools": _TOOLS, "stream": {"type": _LAX_BOOL},
        "messages": {"type": "array", "description": _LIMITED},
        "max_tokens": {"type": _LAX_INT[:-1], "description": _LIMITED},
    },
}


def openapi_config() -> OpenAPIConfig:
    """The app's OpenAPI configuration: the document at `PATH`, JSON only, no documentation site."""
    return OpenAPIConfig(
        title="llm-gateway",
        version=version("llm-gateway"),
        description="An OpenAI-compatible LLM routing gateway with cost accounting. Every path but the open "
                    "ones needs an API key of a role the operation's description names.",
        path=PATH,
        # "/" is PATH itself; "/openapi.json" would otherwise be Litestar's own rendering, uncompleted.
        render_plugins=[CompletedJson(path=["/", "/openapi.json"])],
    )


class CompletedJson(JsonRenderPlugin):
    """Litestar's document, completed by `complete` and encoded once, for the first admin who asks."""

    def __init__(self, path: list[str]) -> None:
        super().__init__(path=path)
        self.document: bytes | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        if self.document is None:
            self.document = msgspec.json.encode(complete(request.app, openapi_schema))
        return self.document


def complete(app: Litestar, generated: dict[str, Any]) -> dict[str, Any]:
    """Litestar's document (`generated`, left as it is), with what this module's docstring lists."""
    doc = copy.deepcopy(generated)
    paths: dict[str, Any] = doc.setdefault("paths", {})
    bodies: list[tuple[dict[str, Any], Any]] = []  # (an operation, its body's type or JSON Schema)
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for method, (handler, _) in route.route_handler_map.items():
            operation = paths.get(route.path_format, {}).get(method.lower())
            if operation is None:  # not in the document (OPTIONS, the document's own routes)
                continue
            for parameter in operation.get("parameters", ()):
                _not_null(parameter)
            declared = {str(code) for code in handler.responses or ()}
            responses = operation["responses"]
            for code in [c for c in responses if c[0] in "45" and c not in declared]:
                del responses[code]  # Litestar's guesses at its own error shape: the gateway answers in OpenAI's
            if (body := handler.opt.get("request_body")) is not None:
                bodies.append((operation, body))
            if produces := handler.opt.get("produces"):
                success = responses[str(handler.status_code)]
                json_schema = success.get("content", {}).get("application/json", {}).get("schema", {})
                success["content"] = {media: {"schema": json_schema if media == "application/json" else _TEXT}
                                      for media in produces}
    for path, endpoint in ENDPOINTS.items():
        paths[path] = {"post": (operation := _inference(endpoint))}
        bodies.append((operation, endpoint.fields))
    for path, item in paths.items():
        for operation in item.values():
            _secure(path, operation)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(_bodies(bodies))
    schemas["Error"] = ERROR_SCHEMA
    schemas["AnthropicError"] = ANTHROPIC_ERROR_SCHEMA
    components["securitySchemes"] = {"apiKey": {
        "type": "http", "scheme": "bearer",
        "description": "An API key (`gateway keys create`); also accepted in `api-key` or `x-api-key`"}}
    return doc


def _inference(endpoint: Endpoint) -> dict[str, Any]:
    if endpoint.events is not None:  # another API's shape (the Responses and Messages APIs)
        answer = {"description": "The worker's answer, in its API's shape: JSON, or that API's named server-sent "
                                 "events when `stream` is true (no `[DONE]`)",
                  "content": {"application/json": {"schema": {"type": "object"}},
                              "text/event-stream": {"schema": _NAMED_EVENT}}}
    elif "stream" in endpoint.fields.__struct_fields__:
        answer = {"description": "The worker's answer: JSON, or server-sent events when `stream` is true",
                  "content": {"application/json": {"schema": _ANSWER}, "text/event-stream": {"schema": _EVENT}}}
    else:  # never streamed (embeddings, tokenize, score, rerank)
        answer = {"description": "The worker's answer, as vLLM produced it",
                  "content": {"application/json": {"schema": {"type": "object"}}}}
    return {
        "operationId": endpoint.operation_id,
        "summary": endpoint.summary,
        "description": "Only the fields listed are read by the gateway; every other field reaches the worker "
                       "untouched (docs/api.md#inference).",
        "parameters": _INFERENCE_HEADERS,
        "responses": {"200": answer, **(_ANTHROPIC_ERRORS if endpoint.errors == "anthropic" else _ERRORS)},
    }


def _not_null(parameter: dict[str, Any]) -> None:
    """An optional query parameter is absent or a value: Litestar's `oneOf [..., null]` for `T | None`
    would tell a client (or a fuzzer) that it could send null."""
    schema = parameter.get("schema", {})
    branches = [b for b in schema.get("oneOf", ()) if b != {"type": "null"}]
    if parameter.get("in") == "query" and len(branches) == 1 and len(schema["oneOf"]) == 2:
        del schema["oneOf"]
        parameter["schema"] = {**branches[0], **schema}


def _secure(path: str, operation: dict[str, Any]) -> None:
    """The key and the roles `path` needs, and the error envelope as its 4XX / 5XX answers."""
    roles = roles_for(path)
    operation["security"] = [] if roles is None else [{"apiKey": []}]
    needs = "Open: no API key needed." if roles is None else f"Roles: {', '.join(sorted(roles))}."
    operation["description"] = f"{operation.get('description', '')}\n\n{needs}".strip()
    responses = operation.setdefault("responses", {})
    for code, answer in _ERRORS.items():
        responses.setdefault(code, answer)


def _bodies(bodies: list[tuple[dict[str, Any], Any]]) -> dict[str, Any]:
    """Each operation's request body, and the components of the bodies' msgspec types: a body is a type,
    a tuple of types (any one of them) or a JSON Schema (kept inline). The inference bodies accept any
    other field."""
    types = [t for _, body in bodies if not isinstance(body, dict)
             for t in (body if isinstance(body, tuple) else (body,))]
    refs, components = msgspec.json.schema_components(types, ref_template=SCHEMAS)
    schemas = iter(refs)
    for operation, body in bodies:
        if isinstance(body, dict):
            schema, required = body, bool(body.get("required"))
        else:
            kinds = body if isinstance(body, tuple) else (body,)
            schema = next(schemas) if len(kinds) == 1 else {"anyOf": [next(schemas) for _ in kinds]}
            required = any(f.required for kind in kinds for f in msgspec.structs.fields(kind))
        # A body whose every field is optional may be left out (read as `{}`).
        operation["requestBody"] = {"required": required, "content": {"application/json": {"schema": schema}}}
    for endpoint in ENDPOINTS.values():
        component = components[endpoint.fields.__name__]
        component["properties"].update(_BOUNDED.get(endpoint.kind, {}))
        component["additionalProperties"] = True
    if "StreamOptions" in components:  # its flags, read as vLLM reads booleans
        for flag in components["StreamOptions"]["properties"].values():
            flag.pop("anyOf", None)
            flag["type"] = _LAX_BOOL
    return components
