"""Reading the bodies of the endpoints that do not generate text: embeddings, tokenize, detokenize, score and
rerank (vLLM's shapes). As for chat, only what the gateway acts on is read and bounded; every other field
reaches the worker untouched, and the worker's own validation answers the rest.

What is bounded (the policy's `defaults.request_limits`, 400 past them): the inputs of an embeddings call and
the documents (and queries) of a score or rerank call count as prompts (`max_prompts`); the messages of a
chat-shaped call as messages (`max_messages`).
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.inference.openai_request import (
    ParsedRequest,
    RequestFields,
    invalid_fields,
    names_no_model,
    read_object,
)
from router.errors import InvalidRequest
from router.request_limits import RequestLimits

__all__ = [
    "DetokenizeFields",
    "EmbeddingFields",
    "RerankFields",
    "ScoreFields",
    "TokenizeFields",
    "embedding_inputs",
    "parse_detokenize",
    "parse_embeddings",
    "parse_rerank",
    "parse_score",
    "parse_tokenize",
    "prompt_of",
    "score_sides",
    "worker_body",
]


class EmbeddingFields(RequestFields, kw_only=True):
    """`/v1/embeddings`: `input` (a text, texts, token ids, lists of token ids, or chat messages) or vLLM's
    chat-shaped `messages`."""

    input: str | list[Any] | None = None
    messages: list[Any] | None = None


class TokenizeFields(RequestFields, kw_only=True):
    """`/tokenize`: a `prompt`, or chat `messages` (tokenized through the model's chat template)."""

    prompt: str | None = None
    messages: list[Any] | None = None


class DetokenizeFields(RequestFields, kw_only=True):
    """`/detokenize`: token ids."""

    tokens: list[int]


# A query or a document: a text, or a multimodal content object.
ScoreInput = str | dict[str, Any]


class ScoreFields(RequestFields, kw_only=True):
    """`/v1/score`: two sides scored pairwise (one against many, or one to one), in any of vLLM's spellings:
    `queries` and `documents` (or `items`), `text_1` and `text_2`, `data_1` and `data_2`."""

    queries: ScoreInput | list[ScoreInput] | None = None
    documents: ScoreInput | list[ScoreInput] | None = None
    items: ScoreInput | list[ScoreInput] | None = None
    text_1: ScoreInput | list[ScoreInput] | None = None
    text_2: ScoreInput | list[ScoreInput] | None = None
    data_1: ScoreInput | list[ScoreInput] | None = None
    data_2: ScoreInput | list[ScoreInput] | None = None


class RerankFields(RequestFields, kw_only=True):
    """`/v1/rerank`: a `query` and the `documents` ranked against it."""

    query: ScoreInput
    documents: ScoreInput | list[ScoreInput]


def _convert(data: dict[str, Any], kind: type[RequestFields]) -> Any:
    if names_no_model(data):
        data = {k: v for k, v in data.items() if k != "model"}
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise invalid_fields(exc) from exc


def _too_long(param: str, length: int, most: int, what: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': array too long. Expected an array with maximum length {most} "
                          f"({what}, the gateway's limit), but got an array with length {length} instead.",
                          param=param, code="array_above_max_length")


def _missing(param: str) -> InvalidRequest:
    return InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def _count_messages(messages: list[Any], param: str, limits: RequestLimits) -> int:
    """The messages of one conversation, or of a batch of them (a list of lists), within `max_messages`."""
    total = sum(len(m) if isinstance(m, list) else 1 for m in messages)
    if total > limits.max_messages:
        raise _too_long(param, total, limits.max_messages, "messages per call")
    return total


def embedding_inputs(value: Any) -> int:
    """The sequences an embeddings `input` (or `messages`) asks for: one per text or list of token ids in a
    list, one per conversation; a text, token ids or one conversation is one."""
    if not isinstance(value, list) or not value or isinstance(value[0], int | dict):
        return 1
    return len(value)


def _chat(value: Any) -> bool:
    """Whether an embeddings input is chat messages: one conversation, or a batch of them."""
    if not isinstance(value, list) or not value:
        return False
    first = value[0]
    return isinstance(first, dict) or (isinstance(first, list) and bool(first) and isinstance(first[0], dict))


def parse_embeddings(body: bytes, limits: RequestLimits) -> ParsedRequest:
    data = read_object(body, limits.max_depth)
    fields: EmbeddingFields = _convert(data, EmbeddingFields)
    param = "messages" if fields.messages is not None else "input"  # vLLM reads `messages` first
    value = fields.messages if fields.messages is not None else fields.input
    if value is None:
        raise _missing("input")
    if isinstance(value, list) and _chat(value):
        _count_messages(value, param, limits)
    if (n := embedding_inputs(value)) > limits.max_prompts:
        raise _too_long(param, n, limits.max_prompts, "inputs per call")
    return ParsedRequest(data, fields)


def parse_tokenize(body: bytes, limits: RequestLimits) -> ParsedRequest:
    data = read_object(body, limits.max_depth)
    fields: TokenizeFields = _convert(data, TokenizeFields)
    if fields.messages is not None:
        _count_messages(fields.messages, "messages", limits)
    elif fields.prompt is None:
        raise _missing("prompt")
    return ParsedRequest(data, fields)


def parse_detokenize(body: bytes, limits: RequestLimits) -> ParsedRequest:
    data = read_object(body, limits.max_depth)
    return ParsedRequest(data, _convert(data, DetokenizeFields))


_SIDES = (("queries", "documents"), ("queries", "items"), ("text_1", "text_2"), ("data_1", "data_2"))


def _spelling(data: dict[str, Any]) -> tuple[str, str]:
    """The names of a score call's two sides: the spelling with both, else the first with either."""
    return next(((a, b) for a, b in _SIDES if a in data and b in data),
                next(((a, b) for a, b in _SIDES if a in data or b in data), _SIDES[0]))


def score_sides(data: dict[str, Any]) -> tuple[Any, Any]:
    """The two sides a score or rerank call pairs up (None where a side is missing)."""
    first, second = ("query", "documents") if "query" in data else _spelling(data)
    return data.get(first), data.get(second)


def _check_sides(first: Any, second: Any, names: tuple[str, str], limits: RequestLimits) -> None:
    for value, name in ((first, names[0]), (second, names[1])):
        if value is None:
            raise _missing(name)
        if isinstance(value, list) and len(value) > limits.max_prompts:
            raise _too_long(name, len(value), limits.max_prompts, "texts per call")


def parse_score(body: bytes, limits: RequestLimits) -> ParsedRequest:
    data = read_object(body, limits.max_depth)
    fields: ScoreFields = _convert(data, ScoreFields)
    _check_sides(*score_sides(data), _spelling(data), limits)
    return ParsedRequest(data, fields)


def parse_rerank(body: bytes, limits: RequestLimits) -> ParsedRequest:
    data = read_object(body, limits.max_depth)
    fields: RerankFields = _convert(data, RerankFields)
    _check_sides(fields.query, fields.documents, ("query", "documents"), limits)
    return ParsedRequest(data, fields)


def worker_body(parsed: ParsedRequest, model: str, original: bytes,
                max_tokens: int | None = None) -> tuple[bytes, bool]:
    """The body for the worker: the client's, with the model the name means (an alias resolved, `auto`
    chosen); never a stream, so no usage chunk to strip. `max_tokens` does not apply."""
    data = parsed.data
    if data.get("model") == model:
        return original, False
    data["model"] = model
    return msgspec.json.encode(data), False


def prompt_of(kind: str, data: dict[str, Any]) -> Any:
    """What a call's prompt tokens are estimated from when the worker's usage never came
    (gateway/accounting/records.py): the inputs, the texts scored; None for tokenizing, which uses none."""
    if kind == "embeddings":
        return data.get("messages", data.get("input"))
    if kind in ("score", "rerank"):
        return [t for side in score_sides(data) for t in (side if isinstance(side, list) else [side])
                if isinstance(t, str)]
    return None
