"""The compiled classifier: classify.yaml validated and compiled into an immutable `Classifier`.

Phase two of loading classify.yaml (phase one is router/spec.py): every signal becomes a tuple of
precompiled tests on the request's numbers (`Facts`), an optional regular expression and structure, and
its keywords; all the keywords of all signals are merged into one word table (and one phrase table
keyed by first word), so router/classify.py looks them up with one pass over the text per request.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from router.regex_search import Search, searcher
from router.spec import (
    CAPABILITIES,
    STRUCTURES,
    CategorySpec,
    ClassifyFile,
    OutputHintSpec,
    RangeSpec,
    SignalSpec,
    TierSpec,
)
from router.yamlsrc import PathT, Problems, Source, convert

__all__ = [
    "WORD_BYTES",
    "Classifier",
    "Facts",
    "Signal",
    "Test",
    "TokenSettings",
    "as_names",
    "check_range",
    "compile_classifier",
    "keyword_words",
]

KINDS: tuple[str, ...] = ("chat", "completion")  # the values of router.classify.Kind


class Facts:
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


Test = Callable[[Facts], bool]


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
    # Lengths asked for in the text ("a 3000-word essay"): (pattern whose group 1 counts units, tokens per unit).
    output_hints: tuple[tuple[re.Pattern[str], float], ...] = ()

    @property
    def known_categories(self) -> frozenset[str]:
        return frozenset((*self.categories, self.default_category))


# ------------------------------------------------------------------------------------------------- compile


# Keywords match whole words: bytes other than ASCII letters, digits, `_`, `+`, `#` and non-ASCII
# (UTF-8) bytes separate words. The keywords here and the request's text in router/classify.py go
# through the same mapping.
WORD_BYTES = bytes(
    b if (48 <= b <= 57 or 97 <= b <= 122 or 65 <= b <= 90 or b in b"_+#" or b >= 128) else 32 for b in range(256)
)


def keyword_words(keyword: str) -> list[bytes]:
    """A keyword as the words it matches (lower-cased, split like the text is)."""
    return keyword.lower().encode("utf-8", "surrogatepass").translate(WORD_BYTES).split()


def _range_test(attr: str, spec: RangeSpec) -> Test:
    lo, hi = spec.min, spec.max
    if lo is not None and hi is not None:
        return lambda f: lo <= getattr(f, attr) <= hi
    if lo is not None:
        return lambda f: getattr(f, attr) >= lo
    if hi is not None:
        return lambda f: getattr(f, attr) <= hi
    return lambda f: True


def as_names(value: str | tuple[str, ...]) -> tuple[str, ...]:
    """A name or a list of names (the YAML allows both) as a tuple."""
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
    caps = as_names(spec.capabilities)
    any_caps = as_names(spec.any_capability)
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
    cats = as_names(spec.category)
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
    kinds = as_names(spec.kind)
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
    hints: list[tuple[re.Pattern[str], float]] = []
    for i, raw_hint in enumerate(spec.output_hints):
        hint_path: PathT = ("output_hints", i)
        hint = convert(src, raw_hint, OutputHintSpec, hint_path, problems)
        if hint is None:
            continue
        try:
            pattern = re.compile(hint.regex)
        except re.error as exc:
            problems.add(src, (*hint_path, "regex"), f"invalid regular expression: {exc}")
            continue
        if pattern.groups < 1:
            problems.add(src, (*hint_path, "regex"), "the regex needs a group capturing the number")
        elif hint.tokens_per_unit <= 0:
            problems.add(src, (*hint_path, "tokens_per_unit"), "`tokens_per_unit` must be > 0")
        else:
            hints.append((pattern, hint.tokens_per_unit))

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
        output_hints=tuple(hints),
        words=single,
        word_set=frozenset(single),
        phrases=phrases,
        phrase_starts=frozenset(phrases),
    )
