"""Server-sent events as vLLM frames them (and OpenAI): `data: <json>` events, each ended by a blank line,
the stream by `data: [DONE]`."""

from __future__ import annotations

EVENT_END = b"\n\n"
DONE_EVENT = b"data: [DONE]\n\n"
