"""router/regex_search.py: the literal pre-check never changes a regex's answer, and it does skip searches."""

from __future__ import annotations

import random
import re

import pytest

from router.regex_search import searcher

pytestmark = pytest.mark.pure

# The shipped policy's regexes and the classifier's structure regexes, and constructs the reading must treat
# with care: case-insensitive scopes, optional parts, alternations with an empty branch, classes, anchors.
PATTERNS = [
    r"(?:def|fn|func|function) +\w+ *\(|#include *<|=> *\{|console\.log|public static|SELECT .+ FROM ",
    "\\d+(?:\\.\\d+)? *[-+*/^\u00d7\u00f7] *\\d+",
    r"\$\$|\\(?:frac|sum|int|sqrt|begin\{|\(|\[)",
    r"""\{\s*"[^"\n]{1,64}"\s*:""",
    r"\|\s*:?-{3,}",
    r"(?i)select .+ from",
    r"(?i:Straße) x",
    r"ab(?i:CD)ef",
    r"(?i)ab(?-i:CD)ef",
    r"colou?r",
    r"(?:foo|)bar",
    r"x*",
    r"^abc$",
    r"a{2,}b",
    r"a{0,3}b",
    r"[^a]bc",
    r"(?=abc)a",
    r"(?!abc)ab",
    r"(a)\1",
    r"(?>ab|a)c",
    r"a++b",
    r"(?x) a b  c  # verbose",
    r"\bword\b",
    r"[a-c]z",
    r"(?i)[kK]elvin",
]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_answers_are_the_regexes_own_on_fixed_texts(pattern: str) -> None:
    texts = [
        "", "abc", "SELECT a FROM b", "select a from b", "sElEcT x fRoM", "def f(x):", "fn main (",
        "1 + 2", "3.5*4", "12 \u00f7 4", "$$x$$", r"\frac{1}{2}", r"\(x\)", '{"key": 1}', "| a |\n|---|",
        "strasse x", "STRASSE X", "straße x", "STRAẞE X", "abcdef", "abCDef", "ABcdEF", "ABCDEF",
        "color", "colour", "bar", "foobar", "aab", "aaab", "b", "xbc", "abab", "abc", "aabc",
        "a word here", "kelvin", "Kelvin", "\u212aelvin", "\u017felect a from", "\u0130",
    ]
    compiled = re.compile(pattern)
    search = searcher(compiled)
    for text in texts:
        assert search(text) == (compiled.search(text) is not None), (pattern, text)


_ALPHABET = "abAB (){}+-*/$\\:|\"\n1\u017f\u212aK"


def _random_text(rng: random.Random) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 12)))


def _random_pattern(rng: random.Random, depth: int = 0) -> str:
    """A random pattern over the same small alphabet: literals, classes, groups, repeats, alternations."""
    parts = []
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        if roll < 0.45 or depth > 2:
            parts.append(re.escape(rng.choice("abAB (){}+-*/$:|1K")))
        elif roll < 0.55:
            parts.append(rng.choice(["[ab]", "[^a]", "[a-b]", r"\d", r"\w", ".", "[+*/-]", "[\u017fs]"]))
        elif roll < 0.7:
            flags = rng.choice(["", "?:", "?i:", "?-i:"])
            parts.append(f"({flags}{_random_pattern(rng, depth + 1)})")
        elif roll < 0.85:
            parts.append(f"(?:{_random_pattern(rng, depth + 1)}|{_random_pattern(rng, depth + 1)})")
        else:
            parts.append(f"(?:{_random_pattern(rng, depth + 1)})" + rng.choice(["*", "+", "?", "{2}", "{0,2}", "+?"]))
    return "".join(parts)


def test_answers_are_the_regexes_own_on_random_patterns_and_texts() -> None:
    rng = random.Random(20261128)
    checked = skipped = 0
    for _ in range(400):
        source = _random_pattern(rng)
        pattern = re.compile(("(?i)" if rng.random() < 0.3 else "") + source)
        search = searcher(pattern)
        for _ in range(40):
            text = _random_text(rng)
            expected = pattern.search(text) is not None
            assert search(text) == expected, (pattern.pattern, text)
            checked += 1
            skipped += not expected
    assert checked == 16_000 and skipped > 1_000  # the texts exercise both answers


def test_the_search_is_skipped_when_a_required_literal_is_absent() -> None:
    calls: list[str] = []

    class Counting:
        """A compiled pattern that records each search (the pre-check must not call it)."""

        def __init__(self, pattern: str) -> None:
            self._re = re.compile(pattern)
            self.pattern, self.flags = self._re.pattern, self._re.flags

        def search(self, text: str) -> re.Match[str] | None:
            calls.append(text)
            return self._re.search(text)

    code = searcher(Counting(PATTERNS[0]))  # type: ignore[arg-type]
    prose = "Our nightly export job started failing after the last deploy. What should we check first?"
    assert not code(prose)
    assert calls == []  # none of def/fn/func/function, #include, =>, console.log, public static, SELECT
    assert code("please fix: def load(path): ...")
    assert calls == ["please fix: def load(path): ..."]
    always = searcher(Counting(r"\w+"))  # no literal to require: always searched
    assert always(prose)
    assert calls[-1] == prose
