"""The inference endpoints, as data: what the gateway reads from a call's body, how the call is routed, what
goes to the worker and where its answer's usage is. gateway/api/openai.py serves every one of them the same
way (auth, limits, cache, forward, relay, record); what differs between them is here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from gateway.inference.event_relay import EventDialect
from gateway.inference.messages_api import EVENTS as MESSAGES_EVENTS
from gateway.inference.messages_api import MessagesFields, parse_messages, prepare_messages
from gateway.inference.messages_api import read_usage as messages_usage
from gateway.inference.openai_request import (
    ChatFields,
    CompletionFields,
    ParsedRequest,
    RequestFields,
    parse_body,
    upstream_body,
)
from gateway.inference.pooling_request import (
    DetokenizeFields,
    EmbeddingFields,
    RerankFields,
    ScoreFields,
    TokenizeFields,
    parse_detokenize,
    parse_embeddings,
    parse_rerank,
    parse_score,
    parse_tokenize,
    worker_body,
)
from gateway.inference.relay import read_usage
from gateway.inference.responses_api import EVENTS as RESPONSES_EVENTS
from gateway.inference.responses_api import ResponsesFields, parse_responses, prepare_responses
from gateway.inference.responses_api import read_usage as responses_usage
from gateway.inference.usage import Usage
from gateway.outcome import CallKind
from router.classify import Kind
from router.request_limits import RequestLimits
from workers.config import Runner

# The body for the worker given the model chosen and a policy's output cap; and whether the stream's usage
# event (which the gateway asks for, for accounting) is to be dropped because the client did not ask for it.
Prepare = Callable[[ParsedRequest, str, bytes, "int | None"], tuple[bytes, bool]]
# The body read and checked against the policy's request limits (a 400 past them).
Parse = Callable[[bytes, RequestLimits], ParsedRequest]


@dataclass(frozen=True, slots=True)
class Endpoint:
    path: str
    kind: CallKind
    fields: type[RequestFields]  # the fields the gateway reads; the rest pass untouched
    # How routing's classifier and the response cache read the body; None: routed by the model's name alone
    # (gateway/inference/by_name.py), its whole answer cached as it is.
    routed_as: Kind | None
    prepare: Prepare
    read_usage: Callable[[bytes], Usage | None]  # from a whole (non-streamed) answer
    operation_id: str  # for the OpenAPI document
    summary: str
    parse: Parse
    runner: Runner | None = "generate"  # the pools that serve it (a pool's `runner`); None: every pool
    cached: bool = True  # a call routed by name: whether the response cache may answer it
    answer_headers: tuple[str, ...] = ()  # the worker's headers passed on (its usage too, when the body has none)
    # A stream of named events (the Responses and Messages APIs: event_relay.py); None: OpenAI's chunks.
    events: EventDialect | None = None
    errors: Literal["openai", "anthropic"] = "openai"  # the envelope of the gateway's own errors
    keeps_responses: bool = False  # its worker keeps each answer by id: calls go where it is (kept_responses.py)


def _parse_chat(body: bytes, limits: RequestLimits) -> ParsedRequest:
    return parse_body(body, ChatFields, limits)


def _parse_completion(body: bytes, limits: RequestLimits) -> ParsedRequest:
    return parse_body(body, CompletionFields, limits)


def _no_usage(body: bytes) -> Usage:
    """Tokenizing runs no model: the call used no tokens (it is recorded, with none billed)."""
    return Usage()


CHAT = Endpoint("/v1/chat/completions", "chat", ChatFields, "chat", upstream_body, read_usage, "chatCompletions",
                "An OpenAI chat completion, routed to a worker, streamed or not", parse=_parse_chat)
COMPLETION = Endpoint("/v1/completions", "completion", CompletionFields, "completion", upstream_body, read_usage,
                      "completions", "An OpenAI completion (legacy), routed to a worker, streamed or not",
                      parse=_parse_completion)

# Routed by the model's name to a pool that serves them (by_name.py): embeddings, score and rerank to an
# embedding model's (`runner: pooling`), tokenizing to any. vLLM's own aliases of score and rerank are served too.
EMBEDDINGS = Endpoint("/v1/embeddings", "embeddings", EmbeddingFields, None, worker_body, read_usage, "embeddings",
                      "OpenAI embeddings from an embedding model's pool, by the model's name",
                      parse=parse_embeddings, runner="pooling", answer_headers=("metadata",))
TOKENIZE = Endpoint("/tokenize", "tokenize", TokenizeFields, None, worker_body, _no_usage, "tokenize",
                    "vLLM's tokenizer: a prompt or chat messages to token ids, by the model's name",
                    parse=parse_tokenize, runner=None, cached=False)
DETOKENIZE = Endpoint("/detokenize", "detokenize", DetokenizeFields, None, worker_body, _no_usage, "detokenize",
                      "vLLM's tokenizer: token ids to text, by the model's name",
                      parse=parse_detokenize, runner=None, cached=False)


def _score(path: str, operation_id: str) -> Endpoint:
    return Endpoint(path, "score", ScoreFields, None, worker_body, read_usage, operation_id,
                    "vLLM's score: each pair of texts scored by an embedding or cross-encoder model",
                    parse=parse_score, runner="pooling")


def _rerank(path: str, operation_id: str) -> Endpoint:
    return Endpoint(path, "rerank", RerankFields, None, worker_body, read_usage, operation_id,
                    "vLLM's rerank (Jina's and Cohere's shape): documents ranked against a query",
                    parse=parse_rerank, runner="pooling")


# Other APIs' shapes, routed as chats (translated.py): their own fields to the worker, their own stream.
RESPONSES = Endpoint("/v1/responses", "responses", ResponsesFields, "chat", prepare_responses, responses_usage,
                     "responses", "An OpenAI Responses API call, routed to a worker, streamed or in the background",
                     parse=parse_responses, events=RESPONSES_EVENTS, keeps_responses=True)
MESSAGES = Endpoint("/v1/messages", "messages", MessagesFields, "chat", prepare_messages, messages_usage, "messages",
                    "An Anthropic Messages API call (as vLLM serves it), routed to a worker, streamed or not",
                    parse=parse_messages, events=MESSAGES_EVENTS, errors="anthropic")

ENDPOINTS: dict[str, Endpoint] = {e.path: e for e in (
    CHAT, COMPLETION, RESPONSES, MESSAGES, EMBEDDINGS, TOKENIZE, DETOKENIZE,
    _score("/v1/score", "score"), _score("/score", "scoreAlias"),
    _rerank("/v1/rerank", "rerank"), _rerank("/rerank", "rerankAlias"), _rerank("/v2/rerank", "rerankV2"),
)}
