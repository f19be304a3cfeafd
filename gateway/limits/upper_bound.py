"""The most tokens a call can use, read from its body alone: what a budget reservation prices.

Prompt. With byte-level BPE and byte-fallback tokenizers every token stands for at least one byte of
UTF-8 text, so a text has at most as many tokens as bytes; the chat template adds some tokens of its own
(per message, and per request: a default system prompt, the tools' instructions, the generation prompt).
The raw request body is at least as long as the UTF-8 bytes of every string in it (JSON escapes only
lengthen text), so `len(body)` bounds the text of all prompts and messages together without walking
them; no sampling of the text can be fooled. A content part that is not text (an image, audio, a video)
has no such bound (its tokens are the model's processor's choice), nor has a template sent with the
request: only the model's context window bounds those, and no prompt exceeds it (the engine refuses it).

Output. Each prompt (counted by router/request_limits.py's `prompt_count`, as the request's bounds count
them) has `n` choices (or `best_of`, the larger), each writing at most `max_tokens` (for chat also
`max_completion_tokens`, the larger of the two; a routing rule's cap when it set one), and without a
limit at most the context window.

Numbers are read as the engine reads them (pydantic, lax: 3, 3.0 and "3" are all 3), so a value the
gateway's own parsing skips cannot pass the bound by.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["choices", "lax_int", "output_limit", "text_bound"]


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
    bounds them (only the context window does): a chat content part that is not text, or a chat template
    sent with the request."""
    if "chat_template" in body:
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
