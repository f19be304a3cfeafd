"""The inference endpoints, as data: what the gateway reads from a call's body, how the call is routed, what
goes to the worker and where its answer's usage is. gateway/api/openai.py serves every one of them the same
way (auth, limits, cache, forward, relay, record); what differs between them is here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.openai_request import ChatFields, CompletionFields, ParsedRequest, upstream_body
from gateway.outcome import CallKind
from gateway.relay import read_usage
from gateway.usage import Usage
from router.classify import Kind

# The body for the worker given the model chosen and a policy's output cap; and whether the stream's usage
# event (which the gateway asks for, for accounting) is to be dropped because the client did not ask for it.
Prepare = Callable[[ParsedRequest, str, bytes, "int | None"], tuple[bytes, bool]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    path: str
    kind: CallKind
    fields: type[ChatFields] | type[CompletionFields]  # the fields the gateway reads; the rest pass untouched
    routed_as: Kind  # how routing's classifier and the response cache read the body
    prepare: Prepare
    read_usage: Callable[[bytes], Usage | None]  # from a whole (non-streamed) answer
    operation_id: str  # for the OpenAPI document
    summary: str


CHAT = Endpoint("/v1/chat/completions", "chat", ChatFields, "chat", upstream_body, read_usage, "chatCompletions",
                "An OpenAI chat completion, routed to a worker, streamed or not")
COMPLETION = Endpoint("/v1/completions", "completion", CompletionFields, "completion", upstream_body, read_usage,
                      "completions", "An OpenAI completion (legacy), routed to a worker, streamed or not")

ENDPOINTS: dict[str, Endpoint] = {e.path: e for e in (CHAT, COMPLETION)}
