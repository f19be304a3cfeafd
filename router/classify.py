"""Classification: what a request needs, read from its parsed body (pure, microseconds).

`classify()` walks the body once, estimates the prompt tokens (router/tokens.py), derives the
capabilities the request needs from its fields, and scores task categories and complexity with the
signals of `classify.yaml`. Text signals (keywords, regular expressions, structure) only look at
bounded windows of the text -- the head and tail of the last user message and the head of the system
prompt -- so their cost does not grow with the prompt. Everything is compiled at load time: all the
keywords of all signals become one trie-shaped regular expression scanned once per request.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from router.regex_search import Search, searcher
from router.spec import CAPABILITIES, STRUCTURES, CategorySpec, ClassifyFile, RangeSpec, SignalSpec, TierSpec
from router.tokens import _head, _tail, estimate_tokens
from router.yamlsrc import PathT, Problems, Source, convert

if TYPE_CHECKING:
    from router.policy import PolicySet

__all__ = ["Classifier", "Features", "Kind", "classify", "compile_classifier"]

Kind = Literal["chat", "completion"]
KINDS: tuple[str, ...] = ("chat", "completion")
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


# ------------------------------------------------------------------------------------------ compiled signals


class _Facts:
    """The request's numbers that signals may test (before category and tier are known)."""

    __slots__ = ("capabilities", "category", "context_tokens", "kind", "max_tokens", "prompt_tokens", "turns")

    def __init__(self, kind: str, prompt_tokens: int, max_tokens: int, turns: int, caps: frozenset[str]) -> None:
        self.kind = kind
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_tokens = prompt_tokens + max_tokens
        self.turns = turns
        self.capabilities = caps
        self.category = ""


Test = Callable[[_Facts], bool]


@dataclass(frozen=True, slots=True, eq=False)
class Signal:
    label: str  # e.g. "code/code_fence"
    weight: int
    has_keywords: bool
    regex: Search | None  # the signal's regular expression: does it match in the text?
    structure: str | None
    tests: tuple[Test, ...]


@dataclass(frozen=True, slots=True)
class TokenSettings:
    exact_chars: int
    sample_chars: int
    per_message: int
    per_request: int
    image_tokens: int
    default_output_tokens: int


@dataclass(frozen=True, slots=True)
class Classifier:
    """classify.yaml, compiled."""

    tokens: TokenSettings
    head_chars: int
    tail_chars: int
    system_chars: int
    fence_chars: int
    long_context_tokens: int
    default_category: str
    categories: tuple[str, ...]  # in declaration order (ties go to the earlier one)
    min_scores: tuple[int, ...]  # per category
    category_signals: tuple[tuple[Signal, ...], ...]  # per category
    complexity_signals: tuple[Signal, ...]
    tiers: tuple[tuple[int, int], ...]  # (min_score, tier), highest min_score first
    lowest_tier: int
    words: Mapping[bytes, frozenset[Signal]]  # one-word keyword -> the signals it fires
    word_set: frozenset[bytes]
    phrases: Mapping[bytes, tuple[tuple[bytes, frozenset[Signal]], ...]]  # first word -> (b" phrase ", signals)
    phrase_starts: frozenset[bytes]
    # Request headers that routing rules look at (lower-cased); the others are not kept. None: keep all.
    header_names: frozenset[str] | None = None

    @property
    def known_categories(self) -> frozenset[str]:
        return frozenset((*self.categories, self.default_category))


# ------------------------------------------------------------------------------------------------ classify


@functools.cache
def _default_policy() -> PolicySet:
    from router.policy import default_policy_dir, load_policy_set

    return load_policy_set(default_policy_dir())


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_IMAGE_PARTS = frozenset(("image_url", "input_image", "image", "video_url"))
_AUDIO_PARTS = frozenset(("input_audio", "audio_url"))
_TEXT_PARTS = frozenset(("text", "input_text"))


def classify(
    body: dict[str, Any],
    kind: Kind,
    headers: Mapping[str, str],
    classifier: Classifier | None = None,
) -> Features:
    """Features of a parsed request body (chat or completion).

    `classifier` is the compiled classify.yaml of the policy in force (`policy.classifier`); without it,
    the shipped default policy's is used. Fields of unexpected types are ignored, never fatal.
    """
    cls = classifier if classifier is not None else _default_policy().classifier
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

    # ---- tokens
    prompt_tokens, exact = estimate_tokens(pieces, total, tok.exact_chars, tok.sample_chars)
    prompt_tokens += token_ids + images * tok.image_tokens
    if kind == "chat":
        prompt_tokens += n_messages * tok.per_message + tok.per_request
        max_tokens = _int(body.get("max_completion_tokens"))
        if max_tokens is None:
            max_tokens = _int(body.get("max_tokens"))
        assumed = max_tokens is None
        output = tok.default_output_tokens if max_tokens is None else max_tokens
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
    facts = _Facts(kind, prompt_tokens, output, turns, frozen_caps)
    user_chars = sum(len(t) for t in user_texts)
    if user_chars <= cls.head_chars + cls.tail_chars:
        window = user_texts[0] if len(user_texts) == 1 else "\n".join(user_texts)
    else:
        window = _head(user_texts, cls.head_chars) + "\n" + _tail(user_texts, cls.tail_chars)
    if system_texts and cls.system_chars:
        window = _head(system_texts, cls.system_chars) + "\n" + window
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
                words = self.window.lower().encode("utf-8", "surrogatepass").translate(_WORD_BYTES).split()
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

    def fires(self, sig: Signal, facts: _Facts) -> bool:
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


# ------------------------------------------------------------------------------------------------- compile


# Keywords match whole words: bytes other than ASCII letters, digits, `_`, `+`, `#` and non-ASCII
# (UTF-8) bytes separate words. Keywords go through the same mapping at load time.
_WORD_BYTES = bytes(
    b if (48 <= b <= 57 or 97 <= b <= 122 or 65 <= b <= 90 or b in b"_+#" or b >= 128) else 32 for b in range(256)
)


def keyword_words(keyword: str) -> list[bytes]:
    """A keyword as the words it matches (lower-cased, split like the text is)."""
    return keyword.lower().encode("utf-8", "surrogatepass").translate(_WORD_BYTES).split()


def _range_test(attr: str, spec: RangeSpec) -> Test:
    lo, hi = spec.min, spec.max
    if lo is not None and hi is not None:
        return lambda f: lo <= getattr(f, attr) <= hi
    if lo is not None:
        return lambda f: getattr(f, attr) >= lo
    if hi is not None:
        return lambda f: getattr(f, attr) <= hi
    return lambda f: True


def _names(value: str | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else value


def check_range(src: Source, path: PathT, spec: RangeSpec | None, problems: Problems) -> None:
    if spec is None:
        return
    if spec.min is None and spec.max is None:
        problems.add(src, path, "a range needs `min`, `max` or both")
    elif spec.min is not None and spec.max is not None and spec.min > spec.max:
        problems.add(src, path, f"empty range: min {spec.min} > max {spec.max}; it can never match")


def _compile_signal(
    src: Source,
    path: PathT,
    raw: Any,
    owner: str,
    known_categories: frozenset[str] | None,
    problems: Problems,
    keywords: dict[bytes, set[Signal]],
) -> Signal | None:
    spec = convert(src, raw, SignalSpec, path, problems)
    if spec is None:
        return None
    ok = True
    tests: list[Test] = []
    caps = _names(spec.capabilities)
    any_caps = _names(spec.any_capability)
    for field, names in (("capabilities", caps), ("any_capability", any_caps)):
        for name in names:
            if name not in CAPABILITIES:
                problems.add(src, (*path, field), f"unknown capability `{name}` (known: {', '.join(CAPABILITIES)})")
                ok = False
    if caps:
        need = frozenset(caps)
        tests.append(lambda f: need <= f.capabilities)
    if any_caps:
        anyset = frozenset(any_caps)
        tests.append(lambda f: not anyset.isdisjoint(f.capabilities))
    cats = _names(spec.category)
    if cats:
        if known_categories is None:
            problems.add(src, (*path, "category"), "a category signal cannot depend on the category")
            ok = False
        else:
            for c in cats:
                if c not in known_categories:
                    problems.add(src, (*path, "category"), f"unknown category `{c}`")
                    ok = False
            catset = frozenset(cats)
            tests.append(lambda f: f.category in catset)
    kinds = _names(spec.kind)
    for k in kinds:
        if k not in KINDS:
            problems.add(src, (*path, "kind"), f"unknown kind `{k}` (chat or completion)")
            ok = False
    if kinds:
        kindset = frozenset(kinds)
        tests.append(lambda f: f.kind in kindset)
    for attr in ("prompt_tokens", "max_tokens", "context_tokens", "turns"):
        rng: RangeSpec | None = getattr(spec, attr)
        if rng is not None:
            check_range(src, (*path, attr), rng, problems)
            tests.append(_range_test(attr, rng))
    pattern: Search | None = None
    if spec.regex is not None:
        try:
            pattern = searcher(re.compile(spec.regex))
        except re.error as exc:
            problems.add(src, (*path, "regex"), f"invalid regular expression: {exc}")
            ok = False
    if spec.structure is not None and spec.structure not in STRUCTURES:
        known_structures = ", ".join(STRUCTURES)
        problems.add(src, (*path, "structure"), f"unknown structure `{spec.structure}` (known: {known_structures})")
        ok = False
    words = tuple(w.lower() for w in spec.keywords)
    for w in words:
        if not keyword_words(w):
            problems.add(src, (*path, "keywords"), f"keyword {w!r} has no letters or digits; it can never match")
            ok = False
    if not (tests or spec.regex is not None or spec.structure or words):
        problems.add(src, path, "a signal needs at least one condition (keywords, regex, structure, ...)")
        ok = False
    if not ok:
        return None
    default_name = spec.structure or (f"keyword {words[0]!r}" if words else "regex" if pattern else "condition")
    sig = Signal(
        label=f"{owner}/{spec.name or default_name}",
        weight=spec.weight,
        has_keywords=bool(words),
        regex=pattern,
        structure=spec.structure,
        tests=tuple(tests),
    )
    for w in words:
        keywords.setdefault(b" ".join(keyword_words(w)), set()).add(sig)
    return sig


def compile_classifier(src: Source, problems: Problems) -> Classifier | None:
    """classify.yaml (already read) -> Classifier; None when it has errors (recorded in `problems`)."""
    data = src.data if src.data is not None else {}
    spec = convert(src, data, ClassifyFile, (), problems)
    if spec is None:
        return None
    before = len(problems.items)
    t = spec.tokens
    for name in ("exact_chars", "sample_chars", "default_output_tokens"):
        if getattr(t, name) < 1:
            problems.add(src, ("tokens", name), f"`{name}` must be >= 1")
    for name in ("per_message", "per_request", "image_tokens"):
        if getattr(t, name) < 0:
            problems.add(src, ("tokens", name), f"`{name}` must be >= 0")
    for name in ("head_chars", "tail_chars", "system_chars", "fence_chars"):
        if getattr(spec.scan, name) < 0:
            problems.add(src, ("scan", name), f"`{name}` must be >= 0")
    if spec.long_context_tokens < 1:
        problems.add(src, ("long_context_tokens",), "`long_context_tokens` must be >= 1")

    keywords: dict[bytes, set[Signal]] = {}

    categories: list[str] = []
    min_scores: list[int] = []
    per_category: list[tuple[Signal, ...]] = []
    for cat, raw in spec.categories.items():
        path: PathT = ("categories", cat)
        if not isinstance(cat, str) or not cat:
            problems.add(src, path, "category names must be non-empty strings")
            continue
        cspec = convert(src, raw, CategorySpec, path, problems)
        if cspec is None:
            continue
        signals = []
        for i, raw_sig in enumerate(cspec.signals):
            sig = _compile_signal(
                src, (*path, "signals", i), raw_sig, cat, None, problems, keywords
            )
            if sig is not None:
                signals.append(sig)
        if not cspec.signals:
            problems.add(src, path, f"category `{cat}` has no signals; it can never be chosen")
        categories.append(cat)
        min_scores.append(cspec.min_score)
        per_category.append(tuple(signals))
    known = frozenset((*categories, spec.default_category))

    complexity_signals: list[Signal] = []
    tiers: list[tuple[int, int]] = []
    cx = spec.complexity
    for i, raw_sig in enumerate(cx.signals):
        sig = _compile_signal(
            src, ("complexity", "signals", i), raw_sig, "complexity", known, problems, keywords
        )
        if sig is not None:
            complexity_signals.append(sig)
    raw_tiers = cx.tiers
    seen_tiers: dict[int, int] = {}
    for i, raw_tier in enumerate(raw_tiers):
        tier_path: PathT = ("complexity", "tiers", i)
        tier_spec = convert(src, raw_tier, TierSpec, tier_path, problems)
        if tier_spec is None:
            continue
        if tier_spec.tier in seen_tiers:
            problems.add(src, tier_path, f"tier {tier_spec.tier} is listed twice")
        seen_tiers[tier_spec.tier] = tier_spec.min_score
        tiers.append((tier_spec.min_score, tier_spec.tier))
    ordered = sorted(tiers)
    for (s1, t1), (s2, t2) in itertools.pairwise(ordered):
        if s1 == s2:
            problems.add(src, ("complexity", "tiers"), f"tiers {t1} and {t2} have the same min_score {s1}")
        elif t2 <= t1:
            problems.add(src, ("complexity", "tiers"), f"tier {t2} needs a higher score than tier {t1}; "
                         "higher tiers must need higher scores")
    if len(problems.items) != before:
        return None

    single = {w: frozenset(sigs) for w, sigs in keywords.items() if b" " not in w}
    by_first: dict[bytes, list[tuple[bytes, frozenset[Signal]]]] = {}
    for w, sigs in keywords.items():
        if b" " in w:
            by_first.setdefault(w.split(b" ", 1)[0], []).append((b" " + w + b" ", frozenset(sigs)))
    phrases = {first: tuple(found) for first, found in by_first.items()}
    return Classifier(
        tokens=TokenSettings(
            exact_chars=t.exact_chars,
            sample_chars=t.sample_chars,
            per_message=t.per_message,
            per_request=t.per_request,
            image_tokens=t.image_tokens,
            default_output_tokens=t.default_output_tokens,
        ),
        head_chars=spec.scan.head_chars,
        tail_chars=spec.scan.tail_chars,
        system_chars=spec.scan.system_chars,
        fence_chars=spec.scan.fence_chars,
        long_context_tokens=spec.long_context_tokens,
        default_category=spec.default_category,
        categories=tuple(categories),
        min_scores=tuple(min_scores),
        category_signals=tuple(per_category),
        complexity_signals=tuple(complexity_signals),
        tiers=tuple(sorted(tiers, reverse=True)),
        lowest_tier=min((tier for _, tier in tiers), default=1),
        words=single,
        word_set=frozenset(single),
        phrases=phrases,
        phrase_starts=frozenset(phrases),
    )
