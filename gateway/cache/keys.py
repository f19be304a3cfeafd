"""The cache key: a hash of the canonical request after routing, scoped by tenant (or a policy's namespace).

Canonical means: the model routing chose (not the name the client asked for), the policy's `max_tokens`
cap applied as it is sent to the worker, every other field the client sent except those that do not
change the answer (`stream`, `stream_options`, `user`, ...), JSON object keys sorted at every depth,
no whitespace, and integral floats at the top level written as integers (`"temperature": 0.0` is
`"temperature": 0`). Field values are otherwise compared exactly: an explicit default (`"n": 1`) is a
different request from an absent one.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

# Fields that never change the answer: how it is delivered (stream, stream_options), who asks for the
# client's own bookkeeping (user, metadata, store), and scheduling hints (priority, service_tier, request_id).
NOT_IN_KEY = frozenset(
    {"model", "stream", "stream_options", "user", "metadata", "store", "service_tier", "priority", "request_id"}
)
KEY_VERSION = b"v1"  # change when the key or the entry format changes: old entries are then never read

_encode_sorted = msgspec.json.Encoder(order="sorted").encode


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def canonical_request(kind: str, body: dict[str, Any], model: str, max_tokens: int | None) -> bytes:
    """The bytes the key hashes: the request as the worker will see it, less what does not change the
    answer, in one canonical JSON form."""
    canon = {k: _plain(v) for k, v in body.items() if k not in NOT_IN_KEY}
    canon["model"] = model
    if max_tokens is not None:  # the policy's cap replaces what the client asked (openai_request.upstream_body)
        canon["max_tokens"] = max_tokens
        if "max_completion_tokens" in canon:
            canon["max_completion_tokens"] = max_tokens
    return kind.encode() + b"\n" + _encode_sorted(canon)


def scope_of(tenant: str, namespace: str | None) -> str:
    """Entries are the tenant's own unless the policy shares them under a namespace."""
    return f"ns={namespace}" if namespace is not None else f"t={tenant}"


def cache_key(
    prefix: str,
    kind: str,  # the call's kind (gateway/outcome.py's CallKind): the same body at another endpoint is another key
    body: dict[str, Any],
    model: str,
    max_tokens: int | None,
    tenant: str,
    namespace: str | None = None,
) -> str:
    """`<prefix><scope>:<sha256>`; the scope is in the hash too, so no two scopes can share an entry."""
    scope = scope_of(tenant, namespace)
    h = hashlib.sha256(KEY_VERSION)
    h.update(b"\0" + scope.encode() + b"\0")
    h.update(canonical_request(kind, body, model, max_tokens))
    return f"{prefix}{scope}:{h.hexdigest()}"


def lock_key(key: str) -> str:
    return key + ":lock"
