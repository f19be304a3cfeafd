"""The simulator's streamed answers: vLLM 0.32's server-sent events (``data: {json}\\n\\n`` chunks,
then ``data: [DONE]``), built from pre-encoded pieces so a token costs a few byte concatenations."""

from __future__ import annotations

import msgspec

from vllm_sim.responses import SYSTEM_FINGERPRINT
from vllm_sim.text import Generated

__all__ = ["DONE", "SSE_HEADERS", "SSEEncoder"]

SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"vary", b"Origin"),
]
DONE = b"data: [DONE]\n\n"
_FP_JSON = msgspec.json.encode(SYSTEM_FINGERPRINT)


class SSEEncoder:
    """Pre-encoded pieces of one streamed response's ``data: {json}\\n\\n`` events."""

    __slots__ = ("chat", "fp_tail", "head", "mid", "pre")

    def __init__(self, chat: bool, rid: bytes, created: int, model_json: bytes, include_usage: bool) -> None:
        obj = b"chat.completion.chunk" if chat else b"text_completion"
        self.chat = chat
        self.head = b'data: {"id":"%s","object":"%s","created":%d,"model":%s,"choices":[' % (
            rid,
            obj,
            created,
            model_json,
        )
        self.pre: dict[int, bytes] = {}
        if chat:
            self.mid = b'},"logprobs":null,"finish_reason":null,"token_ids":null}]}\n\n'
        else:
            self.mid = b',"logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}]}\n\n'  # noqa: E501
        # with include_usage the fingerprint moves to the usage chunk
        self.fp_tail = b"" if include_usage else b',"system_fingerprint":' + _FP_JSON

    def _pre(self, index: int) -> bytes:
        pre = self.pre.get(index)
        if pre is None:
            if self.chat:
                pre = self.head + b'{"index":%d,"delta":{"content":' % index
            else:
                pre = self.head + b'{"index":%d,"text":' % index
            self.pre[index] = pre
        return pre

    def steps(self, gens: list[Generated], start: int, stop: int) -> list[bytes]:
        """The chunks of token steps ``start`` to ``stop`` (exclusive) of every choice; a chat starts
        with one role chunk per choice, and a choice's last token carries its finish reason."""
        parts: list[bytes] = []
        if start == 0 and self.chat:
            for i in range(len(gens)):
                parts.append(
                    self.head + b'{"index":%d,"delta":{"role":"assistant","content":""},"logprobs":null,'
                    b'"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null}\n\n' % i
                )
        mid = self.mid
        if len(gens) == 1:
            jsons = gens[0].jsons
            last = len(jsons) - 1
            pre = self._pre(0)
            for s in range(start, min(stop, last)):
                parts += (pre, jsons[s], mid)
            if start <= last < stop:
                parts.append(self._final(0, gens[0], jsons[last]))
            return parts
        for s in range(start, stop):
            for i, g in enumerate(gens):
                last = len(g.jsons) - 1
                if s < last:
                    parts += (self._pre(i), g.jsons[s], mid)
                elif s == last:
                    parts.append(self._final(i, g, g.jsons[s]))
        return parts

    def _final(self, index: int, g: Generated, token_json: bytes) -> bytes:
        reason = b'"%s"' % g.finish_reason.encode()
        stop_reason = b"null" if g.stop_reason is None else msgspec.json.encode(g.stop_reason)
        if self.chat:
            body = b'},"logprobs":null,"finish_reason":%s,"stop_reason":%s,"token_ids":null}]' % (
                reason,
                stop_reason,
            )
        else:
            body = (
                b',"logprobs":null,"finish_reason":%s,"stop_reason":%s,"prompt_token_ids":null,"token_ids":null}]'
                % (
                    reason,
                    stop_reason,
                )
            )
        return self._pre(index) + token_json + body + self.fp_tail + b"}\n\n"

    def tail(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """What follows the last token: the usage chunk when asked for, then ``[DONE]``."""
        if not self.fp_tail:  # include_usage
            usage = (
                b'],"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d},"system_fingerprint":'
                % (
                    prompt_tokens,
                    prompt_tokens + completion_tokens,
                    completion_tokens,
                )
            )
            return self.head + usage + _FP_JSON + b"}\n\n" + DONE
        return DONE
