"""The most tokens a call can use, read from its body alone: what a budget reservation prices.

Prompt. With byte-level BPE and byte-fallback tokenizers every token stands for at least one byte of
UTF-8 text, so a text has at most as many tokens as bytes; the chat template adds some tokens of its own
(per message, and per request: a default system prompt, the tools' instructions, the generation prompt).
The raw request body is at least as long as the UTF-8 bytes of every string in it (JSON escapes only
lengthen text), so `len(body)` bounds the text of all prompts and messages together without walking
them; no sampling of the text can be fooled. A content part that is not text (an image, audio, a video)
has no such bound (its tokens are the model's processor's choice), nor has a template sent with the
request: only the model's context window bounds those, and no prompt exceeds it (the engine refuses it).
The Responses and Messages APIs are bounded through their chat view (gateway/inference/translated.py), which marks
what their bodies' bytes do not bound: a conversation the worker keeps (`previous_response_id`), a tool
input the worker writes out again (Anthropic's `tool_use`), an item it expands.

Output. Each prompt (counted by router/request_limits.py's `prompt_count`, as the request's bounds count
them) has `n` choices (or `best_of`, the larger), each writing at most `max_tokens` (for chat also
`max_completion_tokens`, the larger of the two; a routing rule's cap when it set one), and without a
limit at most the context window.

Embeddings, score and rerank (`pooled_texts`) have no output; their prompts are bounded the same way, per
sequence the engine encodes, a text scored against several others counted once for each.

Numbers are read as the engine reads them (pydantic, lax: 3, 3.0 and "3" are all 3), so a value the
gateway's own parsing skips cannot pass the bound by.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["choices", "lax_int", "output_limit", "pooled_texts", "text_bound"]


HUGE = 10**18  # a number too large for a float: more than any budget can pay for


def _ceil(number: float) -> int | None:
    if math.isnan(number):
        return None
    return math.ceil(number) if math.isfinite(number) else (HUGE if number > 0 else -HUGE)


def lax_int(value: Any) -> int | None:
    """`value` as an integer the way the engine's request model coerces it, rounded up; None when it is none."""
    if isinstance(value, int):  # bool included: True reads as 1
        return int(value)
    if isinstance(value, float):
        return _ceil(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:  # not an integer, or over Python's 4,300 digits: float() reads both
            try:
                return _ceil(float(value))
            except ValueError:
                return None
    return None


def choices(body: Mapping[str, Any]) -> int:
    """Sequences generated per prompt: `n`, or `best_of` when larger."""
    n, best_of = body.get("n"), body.get("best_of")
    if n is None and best_of is None:  # the common call
        return 1
    return max(1, lax_int(n) or 1, lax_int(best_of) or 1)


def output_limit(body: Mapping[str, Any], kind: str) -> int | None:
    """The output limit of one choice as the engine applies it; None when there is none (up to the context
    window). Chat: `max_completion_tokens` or `max_tokens`, the larger; completions read `max_tokens` only.
    A value below 1 does not limit."""
    limit = body.get("max_tokens")
    if type(limit) is not int:
        limit = lax_int(limit)
    if kind == "chat" and (other := body.get("max_completion_tokens")) is not None:
        other = lax_int(other)
        if other is not None and (limit is None or other > limit):
            limit = other
    return limit if limit is not None and limit >= 1 else None


def text_bound(size: int, body: Mapping[str, Any], prompts: int, per_request: int, per_message: int) -> int | None:
    """Tokens a call's prompts can have, all together: the body's `size` in bytes, plus the template's
    `per_request` tokens for each prompt and `per_message` for each chat message. None when no byte count
    bounds them (only the context window does): a chat content part that is not text, a chat template sent
    with the request, or a conversation the worker holds (a Responses call's `previous_response_id`)."""
    if "chat_template" in body or body.get("previous_response_id") is not None:
        return None
    messages = body.get("messages")
    if type(messages) is not list:
        return size + prompts * per_request
    for message in messages:
        if type(message) is dict and type(content := message.get("content")) is list:
            for part in content:
                if type(part) is not dict or part.get("type") != "text":
                    return None
    return size + prompts * per_request + len(messages) * per_message


def _text_parts(messages: list[Any]) -> bool:
    """Whether chat messages hold text only (a string content, or text parts)."""
    for message in messages:
        content = message.get("content") if type(message) is dict else None
        if type(content) is list and any(type(p) is not dict or p.get("type") != "text" for p in content):
            return False
    return True


def _side(value: Any) -> list[str] | None:
    """One side of a score or rerank call as its texts; None when it holds anything else (an image)."""
    texts = value if type(value) is list else [value]
    return texts if texts and all(type(t) is str for t in texts) else None


def pooled_texts(kind: str, body: Mapping[str, Any], sides: tuple[Any, Any]) -> tuple[int, int | None, int]:
    """What an embeddings, score or rerank call has its engine encode, as counts that bound its prompt tokens
    with the body's bytes: (sequences encoded, bytes of text encoded more than once, chat messages). The bytes
    are None when no byte count bounds the prompt (an image, a content part that is not text).

    Embeddings encode each input (a text, token ids, a conversation) once. Scoring one text against n others
    encodes both sides (an embedding model) or each pair as one sequence (a cross-encoder): the one text may
    be encoded n times. `sides`: the two sides of a score or rerank call (gateway/inference/pooling_request.py)."""
    if kind == "embeddings":
        value = body.get("messages", body.get("input"))
        if type(value) is not list or not value or type(value[0]) is int:
            return 1, 0, 0
        first = value[0]
        if type(first) is dict:  # one conversation
            return 1, 0 if _text_parts(value) else None, len(value)
        if type(first) is list and first and type(first[0]) is dict:  # a batch of them
            conversations = [c for c in value if type(c) is list]
            text = len(conversations) == len(value) and all(_text_parts(c) for c in conversations)
            return len(value), 0 if text else None, sum(len(c) for c in conversations)
        return len(value), 0, 0
    first, second = sides
    firsts, seconds = first if type(first) is list else [first], second if type(second) is list else [second]
    pairs = max(len(firsts), len(seconds), 1)
    one = firsts if len(firsts) == 1 else seconds if len(seconds) == 1 else None
    if _side(first) is None or _side(second) is None:
        return 2 * pairs, None, 0
    repeated = len(one[0].encode()) * (pairs - 1) if one is not None else 0
    return 2 * pairs, repeated, 0
