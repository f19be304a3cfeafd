"""Classification: what a request needs, read from its parsed body (pure, microseconds).

`classify()` walks the body once, estimates the prompt tokens (router/tokens.py), derives the
capabilities the request needs from its fields, and scores task categories and complexity with the
signals of the policy's compiled classifier (router/classifier.py). Text signals (keywords, regular
expressions, structure) only look at bounded windows of the text -- the head and tail of the last user
message and the head of the system prompt -- so their cost does not grow with the prompt. The keywords
of all signals are looked up in one pass over the window's words.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from router.classifier import WORD_BYTES, Classifier, Facts, Signal
from router.regex_search import searcher
from router.tokens import _head, _tail, estimate_tokens

__all__ = ["Features", "Kind", "classify"]

Kind = Literal["chat", "completion"]
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's (and vLLM's) default for /v1/completions


class Features(msgspec.Struct, frozen=True, kw_only=True):
    """What the router knows about one request."""

    kind: Kind
    prompt_tokens: int  # estimated (exact when tokens_exact)
    prompt_chars: int
    tokens_exact: bool
    max_tokens: int | None  # as requested (max_completion_tokens / max_tokens); None when absent
    output_tokens: int  # requested, the API's default (completions: 16), or the assumed default (chat)
    output_assumed: bool  # True when a chat request sets no limit: output_tokens is classify.yaml's guess
    capabilities: frozenset[str]
    category: str
    category_score: int
    tier: int  # complexity tier
    complexity: int  # complexity score
    turns: int  # user messages (1 for a completion)
    messages: int
    images: int
    n: int
    stream: bool
    deterministic: bool  # temperature 0 or a seed: the same request gives the same answer
    headers: dict[str, str]  # lower-cased names; only those the policy's rules match on
    signals: tuple[str, ...]  # which classifier signals fired, for explain

    @property
    def context_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


# ------------------------------------------------------------------------------------------------ classify


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_IMAGE_PARTS = frozenset(("image_url", "input_image", "image", "video_url"))
_AUDIO_PARTS = frozenset(("input_audio", "audio_url"))
_TEXT_PARTS = frozenset(("text", "input_text"))


def classify(
    body: dict[str, Any],
    kind: Kind,
    headers: Mapping[str, str],
    classifier: Classifier,
) -> Features:
    """Features of a parsed request body (chat or completion).

    `classifier` is the compiled classify.yaml of the policy in force (`policy.classifier`). Fields of
    unexpected types are ignored, never fatal.
    """
    cls = classifier
    tok = cls.tokens
    pieces: list[str] = []
    total = 0
    token_ids = 0
    images = 0
    audio = False
    tool_history = False
    n_messages = 0
    turns = 0
    user_texts: list[str] = []
    system_texts: list[str] = []

    if kind == "chat":
        messages = body.get("messages")
        if isinstance(messages, list):
            for msg in messages:
                if not isinstance(msg, dict):
                    continue
                n_messages += 1
                role = msg.get("role")
                content = msg.get("content")
                texts: list[str]
                if isinstance(content, str):
                    texts = [content]
                elif isinstance(content, list):
                    texts = []
                    for part in content:
                        if isinstance(part, str):
                            texts.append(part)
                        elif isinstance(part, dict):
                            ptype = part.get("type")
                            if ptype in _TEXT_PARTS:
                                text = part.get("text")
                                if isinstance(text, str):
                                    texts.append(text)
                            elif ptype in _IMAGE_PARTS:
                                images += 1
                            elif ptype in _AUDIO_PARTS:
                                audio = True
                else:
                    texts = []
                for text in texts:
                    pieces.append(text)
                    total += len(text)
                if role == "user":
                    turns += 1
                    user_texts = texts
                elif role == "system" or role == "developer":
                    system_texts.extend(texts)
                elif role == "tool" or role == "function":
                    tool_history = True
                calls = msg.get("tool_calls")
                if isinstance(calls, list) and calls:
                    tool_history = True
                    for call in calls:
                        fn = call.get("function") if isinstance(call, dict) else None
                        if isinstance(fn, dict):
                            for key in ("name", "arguments"):
                                value = fn.get(key)
                                if isinstance(value, str):
                                    pieces.append(value)
                                    total += len(value)
                if isinstance(msg.get("function_call"), dict):
                    tool_history = True
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            user_texts = [prompt]
        elif isinstance(prompt, list):
            for item in prompt:
                if isinstance(item, str):
                    user_texts.append(item)
                elif isinstance(item, int):
                    token_ids += 1
                elif isinstance(item, list):
                    token_ids += len(item)
        for text in user_texts:
            pieces.append(text)
            total += len(text)
        turns = 1

    # ---- capabilities the request needs
    caps: set[str] = set()
    tools = body.get("tools")
    functions = body.get("functions")
    for defs in (tools, functions):
        if isinstance(defs, list) and defs:
            caps.add("tools")
            text = msgspec.json.encode(defs).decode()
            pieces.append(text)
            total += len(text)
    if tool_history:
        caps.add("tools")
    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        ftype = fmt.get("type")
        if ftype == "json_schema":
            caps.add("json_schema")
        elif ftype == "json_object":
            caps.add("json_object")
    if body.get("guided_json") is not None:
        caps.add("json_schema")
    structured = body.get("structured_outputs")
    if isinstance(structured, dict) and structured.get("json") is not None:
        caps.add("json_schema")
    logprobs = body.get("logprobs")
    if kind == "chat":
        top = _int(body.get("top_logprobs"))
        if logprobs is True or (top is not None and top > 0):
            caps.add("logprobs")
    elif _int(logprobs) is not None:
        caps.add("logprobs")
    if _int(body.get("prompt_logprobs")) is not None:
        caps.add("logprobs")
    n = _int(body.get("n")) or 1
    best_of = _int(body.get("best_of")) or 1
    if n > 1 or best_of > 1:
        caps.add("n")
    if images:
        caps.add("vision")
    if audio:
        caps.add("audio")

    # ---- the window the text signals look at: bounded, whatever the prompt's length
    user_chars = sum(len(t) for t in user_texts)
    if user_chars <= cls.head_chars + cls.tail_chars:
        window = user_texts[0] if len(user_texts) == 1 else "\n".join(user_texts)
    else:
        window = _head(user_texts, cls.head_chars) + "\n" + _tail(user_texts, cls.tail_chars)
    if system_texts and cls.system_chars:
        window = _head(system_texts, cls.system_chars) + "\n" + window

    # ---- tokens
    prompt_tokens, exact = estimate_tokens(pieces, total, tok.exact_chars, tok.sample_chars)
    prompt_tokens += token_ids + images * tok.image_tokens
    if kind == "chat":
        prompt_tokens += n_messages * tok.per_message + tok.per_request
        max_tokens = _int(body.get("max_completion_tokens"))
        if max_tokens is None:
            max_tokens = _int(body.get("max_tokens"))
        assumed = max_tokens is None
        output = max(tok.default_output_tokens, _asked_length(window, cls)) if max_tokens is None else max_tokens
    else:
        max_tokens = _int(body.get("max_tokens"))
        assumed = False
        output = COMPLETION_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    output = max(output, 0)
    if prompt_tokens + output > cls.long_context_tokens:
        caps.add("long_context")
    frozen_caps = frozenset(caps)

    temperature = body.get("temperature")
    deterministic = (
        isinstance(temperature, int | float) and not isinstance(temperature, bool) and temperature == 0
    ) or _int(body.get("seed")) is not None

    # ---- text signals, on bounded windows
    fired_labels: list[str] = []
    facts = Facts(kind, prompt_tokens, output, turns, frozen_caps)
    scan = _Scan(cls, window, user_texts)

    best = -1
    best_score = 0
    for i, signals in enumerate(cls.category_signals):
        score = 0
        for sig in signals:
            if scan.fires(sig, facts):
                score += sig.weight
                fired_labels.append(sig.label)
        if score >= cls.min_scores[i] and score > best_score:
            best, best_score = i, score
    category = cls.categories[best] if best >= 0 else cls.default_category
    facts.category = category

    complexity = 0
    for sig in cls.complexity_signals:
        if scan.fires(sig, facts):
            complexity += sig.weight
            fired_labels.append(sig.label)
    tier = cls.lowest_tier
    for min_score, t in cls.tiers:
        if complexity >= min_score:
            tier = t
            break

    return Features(
        kind=kind,
        prompt_tokens=prompt_tokens,
        prompt_chars=total,
        tokens_exact=exact,
        max_tokens=max_tokens,
        output_tokens=output,
        output_assumed=assumed,
        capabilities=frozen_caps,
        category=category,
        category_score=best_score if best >= 0 else 0,
        tier=tier,
        complexity=complexity,
        turns=turns,
        messages=n_messages,
        images=images,
        n=n,
        stream=body.get("stream") is True,
        deterministic=deterministic,
        headers=_headers(headers, cls.header_names),
        signals=tuple(fired_labels),
    )


MAX_ASKED_TOKENS = 1_000_000  # a number in the text is a hint, not a reason to expect more than this


def _asked_length(window: str, cls: Classifier) -> int:
    """Output tokens a length asked for in the text implies ("a 3000-word essay"); 0 when none is."""
    best = 0
    for pattern, per_unit in cls.output_hints:
        for match in pattern.finditer(window):
            digits = "".join(ch for ch in match.group(1) if ch.isdigit())
            if digits and len(digits) <= 7:
                best = max(best, int(int(digits) * per_unit))
    return min(best, MAX_ASKED_TOKENS)


def _headers(headers: Mapping[str, str], wanted: frozenset[str] | None) -> dict[str, str]:
    if wanted is None:
        return {k.lower(): v for k, v in headers.items()}
    if not wanted:
        return {}
    return {low: v for k, v in headers.items() if (low := k.lower()) in wanted}


class _Scan:
    """Lazily computed text facts of one request: keyword hits, structure flags, regex results."""

    __slots__ = ("_cls", "_hits", "_structures", "_user", "window")

    def __init__(self, cls: Classifier, window: str, user_texts: list[str]) -> None:
        self._cls = cls
        self.window = window
        self._user = user_texts
        self._hits: frozenset[Signal] | None = None
        self._structures: dict[str, bool] = {}

    def hits(self) -> frozenset[Signal]:
        """Signals whose keywords occur in the window as whole words (case-insensitive)."""
        if self._hits is None:
            cls = self._cls
            found: set[Signal] = set()
            if cls.word_set or cls.phrases:
                words = self.window.lower().encode("utf-8", "surrogatepass").translate(WORD_BYTES).split()
                present = set(words)
                for word in cls.word_set & present:
                    found |= cls.words[word]
                starts = cls.phrase_starts & present  # only phrases whose first word occurs are looked for
                if starts:
                    joined = b" " + b" ".join(words) + b" "
                    for first in starts:
                        for phrase, sigs in cls.phrases[first]:
                            if phrase in joined:
                                found |= sigs
            self._hits = frozenset(found)
        return self._hits

    def structure(self, name: str) -> bool:
        flag = self._structures.get(name)
        if flag is None:
            if name == "code_fence":
                limit = self._cls.fence_chars
                flag = "```" in self.window or any(t.find("```", 0, limit) >= 0 for t in self._user)
            elif name == "json_block":
                flag = _JSON_BLOCK(self.window)
            elif name == "markdown_table":
                flag = _TABLE(self.window)
            else:  # latex
                flag = _LATEX(self.window)
            self._structures[name] = flag
        return flag

    def fires(self, sig: Signal, facts: Facts) -> bool:
        for test in sig.tests:
            if not test(facts):
                return False
        if sig.structure is not None and not self.structure(sig.structure):
            return False
        if sig.has_keywords and sig not in self.hits():
            return False
        return sig.regex is None or sig.regex(self.window)


_JSON_BLOCK = searcher(re.compile(r"""\{\s*"[^"\n]{1,64}"\s*:"""))
_TABLE = searcher(re.compile(r"\|\s*:?-{3,}"))
_LATEX = searcher(re.compile(r"\$\$|\\(?:frac|sum|int|sqrt|begin\{|\(|\[)"))
