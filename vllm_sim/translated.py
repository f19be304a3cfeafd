"""The Responses API (``POST /v1/responses``) and Anthropic's Messages API (``POST /v1/messages``) as vLLM 0.32
serves them, simulated: the body is turned into a chat (as vLLM does), generated as a chat is, and answered in
the API's own shape, JSON or named server-sent events (``event: <name>`` then ``data: <json>``), key order as
vLLM writes them; one choice per call.

As vLLM without ``VLLM_ENABLE_RESPONSES_API_STORE``, the simulator keeps no response: ``background`` is refused
(400) and a ``previous_response_id`` is not found (404). Errors of the Responses API are in OpenAI's envelope;
those of the Messages API in Anthropic's, but for a body vLLM's request model refuses (a missing
``max_tokens``), which FastAPI answers in OpenAI's, as vLLM does.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import msgspec

from vllm_sim.text import Generated
from vllm_sim.validation import HTTPError, _opt, _Validation, error_body

__all__ = ["MESSAGES", "RESPONSES", "Translation"]

_json = msgspec.json.encode


class Encoder(Protocol):
    def steps(self, gens: list[Generated], start: int, stop: int) -> list[bytes]: ...

    def tail(self, prompt_tokens: int, completion_tokens: int) -> bytes: ...


class Translation(Protocol):
    """One call of another API: its chat, and its answers."""

    chat: dict[str, Any]

    def id(self, header_rid: bytes | None) -> bytes: ...

    def error(self, exc: HTTPError) -> HTTPError: ...

    def body(self, rid: bytes, created: int, model: str, g: Generated, prompt_tokens: int,
             completion_tokens: int) -> bytes: ...

    def encoder(self, rid: bytes, created: int, model: str, prompt_tokens: int) -> Encoder: ...


def _event(name: str, data: bytes) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


def _text(content: Any) -> str | list[dict[str, Any]] | None:
    """A content as a chat message's: text parts as text, the rest kept (the template charges them)."""
    if content is None or isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else ():
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind is not None:
            parts.append({"type": str(kind)})
    return parts


# --- the Responses API ---------------------------------------------------------------------------------


class _Responses:
    def __init__(self, body: dict[str, Any], model: str) -> None:
        val = _Validation()
        for key, kind in (("model", "str"), ("instructions", "str"), ("max_output_tokens", "int"),
                          ("temperature", "float"), ("top_p", "float"), ("seed", "int"), ("stream", "bool"),
                          ("background", "bool"), ("store", "bool"), ("previous_response_id", "str"),
                          ("request_id", "str")):
            _opt(body, key, kind, val)
        given = body.get("input")
        if "input" not in body:
            val.add("missing", "body.input", "Field required", body)
        elif not isinstance(given, str | list):
            val.add("string_type", "body.input.str", "Input should be a valid string", given)
        val.raise_if_any()
        if body.get("background"):
            raise HTTPError(400, error_body(
                "This vLLM engine does not support `store=True` and therefore does not support the background "
                "mode. To enable these features, set the environment variable `VLLM_ENABLE_RESPONSES_API_STORE=1` "
                "when launching the vLLM server.", "invalid_request_error", "background", 400))
        if (previous := body.get("previous_response_id")) is not None:
            raise HTTPError(404, error_body(f"Response with id '{previous}' not found.", "invalid_request_error",
                                            "response_id", 404))
        messages: list[dict[str, Any]] = []
        if body.get("instructions"):
            messages.append({"role": "system", "content": body["instructions"]})
        if isinstance(given, str):
            messages.append({"role": "user", "content": given})
        else:
            for item in given or ():
                if isinstance(item, dict) and isinstance(item.get("role"), str):
                    messages.append({"role": item["role"], "content": _text(item.get("content"))})
                elif isinstance(item, dict) and item.get("type") == "function_call_output":
                    messages.append({"role": "tool", "content": _text(item.get("output"))})
        self.chat: dict[str, Any] = {"model": body.get("model") or model, "messages": messages,
                                     "stream": bool(body.get("stream"))}
        for key, to in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"), ("seed", "seed")):
            if body.get(key) is not None:
                self.chat[to] = body[key]
        self.request_id = body.get("request_id")
        self.head = {"instructions": body.get("instructions"), "metadata": None}
        temperature, top_p = body.get("temperature"), body.get("top_p")
        self.settings: dict[str, Any] = {
            "parallel_tool_calls": True, "temperature": 1.0 if temperature is None else float(temperature),
            "tool_choice": "none", "tools": [], "top_p": 1.0 if top_p is None else float(top_p), "background": False,
            "max_output_tokens": body.get("max_output_tokens"), "max_tool_calls": None, "previous_response_id": None,
            "prompt": None, "reasoning": None, "service_tier": "auto"}

    def id(self, header_rid: bytes | None) -> bytes:
        return (self.request_id or f"resp_{os.urandom(8).hex()}").encode()

    def error(self, exc: HTTPError) -> HTTPError:
        return exc

    def response(self, rid: bytes, created: int, model: str, status: str, output: list[Any],
                 usage: dict[str, Any] | None, reason: str | None) -> dict[str, Any]:
        return {"id": rid.decode(), "created_at": created,
                "incomplete_details": {"reason": reason} if reason else None, **self.head, "model": model,
                "object": "response", "output": output, **self.settings, "status": status, "text": None,
                "top_logprobs": None, "truncation": "disabled", "usage": usage, "user": None,
                "presence_penalty": 0.0, "frequency_penalty": 0.0, "kv_transfer_params": None,
                "ec_transfer_params": None, "input_messages": None, "output_messages": None}

    def body(self, rid: bytes, created: int, model: str, g: Generated, prompt_tokens: int,
             completion_tokens: int) -> bytes:
        status, reason = _outcome(g)
        message = _item(f"msg_{os.urandom(8).hex()}", g.text, "completed")
        return _json(self.response(rid, created, model, status, [message], _usage(prompt_tokens, completion_tokens),
                                   reason))

    def encoder(self, rid: bytes, created: int, model: str, prompt_tokens: int) -> Encoder:
        return _ResponsesEvents(self, rid, created, model)


def _outcome(g: Generated) -> tuple[str, str | None]:
    return ("incomplete", "max_output_tokens") if g.finish_reason == "length" else ("completed", None)


def _part(text: str, logprobs: list[Any] | None) -> dict[str, Any]:
    return {"annotations": [], "text": text, "type": "output_text", "logprobs": logprobs}


def _item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [_part(text, None)] if text is not None else []
    return {"id": item_id, "content": content, "role": "assistant", "status": status, "type": "message",
            "phase": None}


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"input_tokens": prompt, "input_tokens_details": {
                "cached_tokens": 0, "cache_write_tokens": 0, "input_tokens_per_turn": [], "cached_tokens_per_turn": []},
            "output_tokens": completion, "output_tokens_details": {
                "reasoning_tokens": 0, "tool_output_tokens": 0, "output_tokens_per_turn": [],
                "tool_output_tokens_per_turn": []},
            "total_tokens": prompt + completion}


class _ResponsesEvents:
    def __init__(self, call: _Responses, rid: bytes, created: int, model: str) -> None:
        self.call, self.rid, self.created, self.model = call, rid, created, model
        self.item = f"msg_{os.urandom(8).hex()}"
        self.sequence = 0
        # `"delta":` + a token's JSON + this: one text delta
        self.delta_head = b'{"content_index":0,"delta":'
        self.delta_tail = (b',"item_id":"%s","logprobs":[],"output_index":0,"sequence_number":' % self.item.encode())

    def _next(self) -> int:
        self.sequence += 1
        return self.sequence - 1

    def _data(self, name: str, data: dict[str, Any]) -> bytes:
        """An event's data, its keys in vLLM's order (by name)."""
        return _event(name, _json(dict(sorted({**data, "sequence_number": self._next(), "type": name}.items()))))

    def steps(self, gens: list[Generated], start: int, stop: int) -> list[bytes]:
        self.g = gens[0]
        parts: list[bytes] = []
        if start == 0:
            started = self.call.response(self.rid, self.created, self.model, "in_progress", [], None, None)
            parts.append(self._data("response.created", {"response": started}))
            parts.append(self._data("response.in_progress", {"response": started}))
            parts.append(self._data("response.output_item.added", {
                "item": _item(self.item, None, "in_progress"), "output_index": 0}))
            parts.append(self._data("response.content_part.added", {
                "content_index": 0, "item_id": self.item, "output_index": 0, "part": _part("", [])}))
        for token in gens[0].jsons[start:stop]:
            parts.append(_event("response.output_text.delta", self.delta_head + token + self.delta_tail
                                + b'%d,"type":"response.output_text.delta"}' % self._next()))
        return parts

    def tail(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """What follows the last token: the text done, the part and the item done, the response completed."""
        g = self.g
        status, reason = _outcome(g)
        done = _item(self.item, g.text, "completed")
        finished = self.call.response(self.rid, self.created, self.model, status, [done],
                                      _usage(prompt_tokens, completion_tokens), reason)
        return b"".join((
            self._data("response.output_text.done", {"content_index": 0, "item_id": self.item, "logprobs": [],
                                                     "output_index": 0, "text": g.text}),
            self._data("response.content_part.done", {"content_index": 0, "item_id": self.item, "output_index": 0,
                                                      "part": _part(g.text, None)}),
            self._data("response.output_item.done", {"item": done, "output_index": 0}),
            self._data("response.completed", {"response": finished}),
        ))


# --- Anthropic's Messages API --------------------------------------------------------------------------


class _Messages:
    def __init__(self, body: dict[str, Any], model: str) -> None:
        val = _Validation()
        for key, kind in (("model", "str"), ("max_tokens", "int"), ("stream", "bool"), ("temperature", "float")):
            _opt(body, key, kind, val)
        for key in ("model", "messages", "max_tokens"):
            if key not in body:
                val.add("missing", f"body.{key}", "Field required", body)
        given = body.get("messages")
        if given is not None and not isinstance(given, list):
            val.add("list_type", "body.messages", "Input should be a valid list", given)
        val.raise_if_any()
        messages: list[dict[str, Any]] = []
        system = body.get("system")
        if isinstance(system, str) and system:
            messages.append({"role": "system", "content": system})
        elif isinstance(system, list):
            messages.append({"role": "system", "content": _text(system)})
        for m in given or ():
            if isinstance(m, dict):
                messages.append({"role": m.get("role"), "content": _text(m.get("content"))})
            else:
                messages.append(m)
        self.chat: dict[str, Any] = {"model": body["model"], "messages": messages, "max_tokens": body["max_tokens"],
                                     "stream": bool(body.get("stream"))}
        if body.get("temperature") is not None:
            self.chat["temperature"] = body["temperature"]

    def id(self, header_rid: bytes | None) -> bytes:
        return b"chatcmpl-" + (header_rid or os.urandom(8).hex().encode())

    def error(self, exc: HTTPError) -> HTTPError:
        """vLLM's checks after parsing answer in Anthropic's envelope; its request model's, in OpenAI's."""
        error = msgspec.json.decode(exc.body)["error"]
        if error["type"] == "Bad Request":
            return exc
        return HTTPError(exc.status, _json({"type": "error", "error": {"type": error["type"],
                                                                      "message": error["message"]}}))

    def body(self, rid: bytes, created: int, model: str, g: Generated, prompt_tokens: int,
             completion_tokens: int) -> bytes:
        return _json({"id": rid.decode(), "type": "message", "role": "assistant",
                      "content": [{"type": "text", "text": g.text}], "model": model,
                      "stop_reason": _stop(g), "usage": {"input_tokens": prompt_tokens,
                                                          "output_tokens": completion_tokens}})

    def encoder(self, rid: bytes, created: int, model: str, prompt_tokens: int) -> Encoder:
        return _MessagesEvents(rid, model, prompt_tokens)


def _stop(g: Generated) -> str:
    return "max_tokens" if g.finish_reason == "length" else "end_turn"


class _MessagesEvents:
    def __init__(self, rid: bytes, model: str, prompt_tokens: int) -> None:
        self.rid, self.model, self.prompt_tokens = rid, model, prompt_tokens

    def steps(self, gens: list[Generated], start: int, stop: int) -> list[bytes]:
        self.g = gens[0]
        parts: list[bytes] = []
        if start == 0:
            message: dict[str, Any] = {"id": self.rid.decode(), "type": "message", "role": "assistant", "content": [],
                       "model": self.model, "stop_reason": None, "stop_sequence": None,
                       "usage": {"input_tokens": self.prompt_tokens, "output_tokens": 0}}
            parts.append(_event("message_start", _json({"type": "message_start", "message": message})))
            parts.append(_event("content_block_start", b'{"type":"content_block_start","content_block":'
                                                       b'{"type":"text","text":""},"index":0}'))
        for token in gens[0].jsons[start:stop]:
            parts.append(_event("content_block_delta", b'{"type":"content_block_delta","delta":{"type":"text_delta",'
                                                       b'"text":' + token + b'},"index":0}'))
        return parts

    def tail(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """What follows the last token: the block's end, the usage, the message's end."""
        delta = {"type": "message_delta", "delta": {"stop_reason": _stop(self.g), "stop_sequence": None},
                 "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens}}
        return b"".join((_event("content_block_stop", b'{"type":"content_block_stop","index":0}'),
                         _event("message_delta", _json(delta)), _event("message_stop", b'{"type":"message_stop"}')))


RESPONSES = _Responses
MESSAGES = _Messages
