"""The learned predictor's view of a request: a fixed-length vector, the same in training and serving.

Language-independent and bounded: the text part is hashed byte n-grams (orders 1-4) of the last user
message (or the completion prompt), read through a window of its first `HEAD_BYTES` and last
`TAIL_BYTES` bytes, so the cost does not grow with the prompt and no vocabulary or word splitting is
involved. The dense part is a few numbers from the request and its classification (sizes, structure,
what it needs). Nothing here can give the text back: counts of hashed n-grams in `BUCKETS` buckets.

`FEATURES` names this layout. A predictor says which layout it was trained on, and stored vectors
(feedback, shadow outcomes) carry it, so a layout change can never mix vectors of two kinds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from router.classify import Features, Kind

__all__ = [
    "BUCKETS",
    "DENSE",
    "FEATURES",
    "SIZE",
    "decode_vector",
    "encode_vector",
    "quality_text",
    "stack",
    "vector",
    "vector_of_text",
]

FEATURES = "bytes4x1024+d26/2"
BUCKETS = 1024
HEAD_BYTES = 1024
TAIL_BYTES = 512
ORDERS = (1, 2, 3, 4)
DENSE = (
    "log_chars",  # of the whole prompt
    "log_prompt_tokens",
    "log_window_bytes",
    "newline_share",  # shares of the window's bytes, in _CLASSES' order
    "digit_share",
    "upper_share",
    "non_ascii_share",
    "code_share",  # {}()[];=<>
    "math_share",  # $\\^_
    "space_share",
    "log_lines",  # counts in the window
    "log_longest_line",
    "log_words",
    "mean_word_bytes",
    "log_numbers",
    "log_questions",
    "log_distinct_bytes",
    "log_indented_lines",
    "ends_with_question",
    "log_messages",  # the request
    "log_turns",
    "system",  # a system prompt is present
    "tools",
    "structured_output",
    "log_max_tokens",  # 0 when absent
    "completion",  # /v1/completions rather than chat
)
SIZE = BUCKETS + len(DENSE)

Vector = npt.NDArray[np.float32]

# Multiplicative hashing over uint32 (wrapping is intended). An order-n hash extends the order-(n-1)
# one by a byte, so all orders cost one pass each; a last multiply-shift takes the bucket from the top bits.
_MUL = np.uint32(0x9E3779B1)
_MIX = np.uint32(0x85EBCA77)
_TOP = np.uint32(32 - (BUCKETS.bit_length() - 1))  # multiply-shift: the top bits pick the bucket
# Byte classes whose shares are dense numbers, in DENSE's order: one matrix product of the window's byte
# histogram gives them all.
_SHARE_BYTES: tuple[bytes, ...] = (
    b"\n", bytes(range(48, 58)), bytes(range(65, 91)), bytes(range(128, 256)), b"{}()[];=<>", b"$\\^_", b" \t\r",
)
_SHARES = np.zeros((256, len(_SHARE_BYTES)), dtype=np.float64)
for _i, _members in enumerate(_SHARE_BYTES):
    _SHARES[list(_members), _i] = 1.0
_SPACES = np.zeros(256, dtype=np.float64)  # what separates words
_SPACES[list(b" \t\r\n")] = 1.0
_WORD_SPLIT = bytes(32 if b in b" \t\r\n" else (120 if b in b"\x0b\x0c" else b) for b in range(256))
_DIGIT_RUNS = bytes(49 if 48 <= b <= 57 else 32 for b in range(256))  # digits stay, the rest splits
_QUESTION_MARKS = (b"?", "\uff1f".encode(), "\u061f".encode())  # ASCII, full-width, Arabic
_TEXT_PARTS = frozenset(("text", "input_text"))


def quality_text(body: Mapping[str, Any], kind: Kind) -> str:
    """The text the predictor reads: the last user message's text (chat) or the prompt (completions)."""
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list):
            return ""
        for msg in reversed(messages):
            if isinstance(msg, dict) and msg.get("role") == "user":
                return _content_text(msg.get("content"))
        return ""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "\n".join(p for p in prompt if isinstance(p, str))
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") in _TEXT_PARTS and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    return ""


def _window(text: str) -> bytes:
    # The head is cut on characters first, so that a huge prompt is never encoded whole.
    if len(text) <= HEAD_BYTES + TAIL_BYTES:
        data = text.encode("utf-8", "surrogatepass")
        if len(data) <= HEAD_BYTES + TAIL_BYTES:
            return data
        return data[:HEAD_BYTES] + b"\n" + data[-TAIL_BYTES:]
    head = text[:HEAD_BYTES].encode("utf-8", "surrogatepass")[:HEAD_BYTES]
    tail = text[-TAIL_BYTES:].encode("utf-8", "surrogatepass")[-TAIL_BYTES:]
    return head + b"\n" + tail


def _ngram_counts(data: bytes) -> npt.NDArray[np.int64]:
    a = np.frombuffer(data, dtype=np.uint8).astype(np.uint32)
    if not len(a):
        return np.zeros(BUCKETS, dtype=np.int64)
    h = a * _MUL
    hashes = [h]
    for order in ORDERS[1:]:
        if len(a) < order:
            break
        h = (h[:-1] ^ a[order - 1 :]) * _MIX
        hashes.append(h)
    every = np.concatenate(hashes)
    every *= _MUL
    every >>= _TOP
    return np.bincount(every, minlength=BUCKETS)


def _log(value: float) -> float:
    return math.log1p(max(0.0, value))


def vector_of_text(
    text: str,
    *,
    prompt_chars: int,
    prompt_tokens: int,
    messages: int,
    turns: int,
    system: bool,
    tools: bool,
    structured_output: bool,
    max_tokens: int | None,
    completion: bool,
) -> Vector:
    """The feature vector (counts and numbers, before any scaling) of a text and request facts."""
    data = _window(text)
    out = np.empty(SIZE, dtype=np.float32)
    out[:BUCKETS] = _ngram_counts(data)
    size = len(data)
    hist = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256).astype(np.float64)
    words = len(data.translate(_WORD_SPLIT).split())
    out[BUCKETS:] = (
        _log(prompt_chars),
        _log(prompt_tokens),
        _log(size),
        *(hist @ _SHARES / max(1, size)),
        _log(hist[10] + 1 if size else 0),
        _log(max(map(len, data.split(b"\n")))),
        _log(words),
        (size - float(hist @ _SPACES)) / max(1, words),
        _log(len(data.translate(_DIGIT_RUNS).split())),
        _log(sum(data.count(q) for q in _QUESTION_MARKS)),
        _log(int(np.count_nonzero(hist))),
        _log(data.count(b"\n    ") + data.count(b"\n\t")),
        float(data.rstrip().endswith(_QUESTION_MARKS)),
        _log(messages),
        _log(turns),
        float(system),
        float(tools),
        float(structured_output),
        _log(max_tokens) if max_tokens is not None else 0.0,
        float(completion),
    )
    return out


def vector(body: Mapping[str, Any], features: Features) -> Vector:
    """The feature vector of a request, from its body and what `classify` found."""
    system = False
    if features.kind == "chat":
        messages = body.get("messages")
        if isinstance(messages, list):
            system = any(isinstance(m, dict) and m.get("role") in ("system", "developer") for m in messages)
    caps = features.capabilities
    return vector_of_text(
        quality_text(body, features.kind),
        prompt_chars=features.prompt_chars,
        prompt_tokens=features.prompt_tokens,
        messages=features.messages,
        turns=features.turns,
        system=system,
        tools="tools" in caps,
        structured_output="json_schema" in caps or "json_object" in caps,
        max_tokens=features.max_tokens,
        completion=features.kind == "completion",
    )


def encode_vector(v: Vector) -> bytes:
    """A compact, exact encoding for storage: bucket counts as uint8 (saturated), then float32 numbers."""
    counts = np.minimum(v[:BUCKETS], 255).astype(np.uint8)
    return counts.tobytes() + v[BUCKETS:].astype("<f4").tobytes()


def decode_vector(data: bytes) -> Vector:
    """The vector `encode_vector` stored (raises ValueError on a blob of the wrong size)."""
    if len(data) != BUCKETS + 4 * len(DENSE):
        raise ValueError(f"a {FEATURES} vector is {BUCKETS + 4 * len(DENSE)} bytes, not {len(data)}")
    out = np.empty(SIZE, dtype=np.float32)
    out[:BUCKETS] = np.frombuffer(data[:BUCKETS], dtype=np.uint8)
    out[BUCKETS:] = np.frombuffer(data[BUCKETS:], dtype="<f4")
    return out


def stack(vectors: Sequence[Vector]) -> npt.NDArray[np.float32]:
    """Vectors as the rows of one matrix (an empty one has SIZE columns all the same)."""
    return np.vstack(vectors) if vectors else np.zeros((0, SIZE), dtype=np.float32)
