"""The inference endpoints speak raw ASGI: the request body read here, answers sent from here.

Litestar still routes them, runs the auth guard and renders every error raised before the answer
starts; what it no longer does for them is build a Request, resolve parameters and turn a Response
into ASGI messages, which cost more CPU than answering over raw ASGI does in all (docs/performance.md,
"Measurements behind the code").
"""

from __future__ import annotations

from dataclasses import dataclass

from litestar.types import Receive, Send

from router.errors import IncompleteBody, RequestTooLarge

HeaderList = list[tuple[bytes, bytes]]


def header_list(media_type: str, headers: dict[str, str]) -> HeaderList:
    """Response headers as ASGI wants them (values are ASCII: ids, model and rule names, numbers)."""
    out = [(b"content-type", media_type.encode("latin-1"))]
    out.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
    return out


@dataclass(slots=True)
class Reply:
    """A whole answer, sent in one piece."""

    content: bytes
    status_code: int
    media_type: str
    headers: dict[str, str]

    async def send(self, receive: Receive, send: Send) -> None:  # as RelayStream.send; nothing to receive
        headers = header_list(self.media_type, self.headers)
        headers.append((b"content-length", str(len(self.content)).encode()))
        await send({"type": "http.response.start", "status": self.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": self.content, "more_body": False})


async def read_body(receive: Receive, content_length: str | None, limit: int) -> bytes:
    """The whole request body; 413 (before reading it, when the client declared its size) past `limit`;
    `IncompleteBody` when the client left, or was timed out (gateway/server_limits.py), before its end."""
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise IncompleteBody("The client went away before the request body was complete.")
        chunk: bytes = message.get("body", b"")  # type: ignore[assignment]  # an http.request message
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"The request body is larger than the limit of {limit} bytes.")
