"""The usage a worker reports (OpenAI's `usage` object), as the gateway reads and keeps it."""

from __future__ import annotations

import msgspec


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int | None = None  # prompt tokens found in the worker's prefix cache


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
