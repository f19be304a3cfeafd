"""Regular-expression search with a literal pre-check: skip the regex when its text cannot match.

Python's `re` tries a pattern at every position of the text when the pattern has no literal prefix
(alternations, `\\d+...`), for every policy regex on every request. Most patterns can only match where
some literal strings occur ("SELECT " and " FROM ", one of "-+*/", ...); `in` finds those in C, far
faster. `searcher()` reads that necessary condition off the pattern's parse tree (the `re` module's own
parser) and runs the regex only when it holds, so the answer is always the regex's own. Anything the
reading does not understand counts as "may match".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the typed names of the same modules (deprecated aliases of re._parser/_constants)
    import sre_constants as _c
    import sre_parse as _p
else:
    from re import _constants as _c
    from re import _parser as _p

__all__ = ["Search", "searcher"]

Search = Callable[[str], bool]  # does the pattern match somewhere in this text?

# A necessary condition, as a tree: a literal (case-insensitive or not) occurs, all of them hold, or any.
_Cond = tuple[Any, ...]
_TRUE: _Cond = ("all", ())
_REPEATS = (_c.MAX_REPEAT, _c.MIN_REPEAT, getattr(_c, "POSSESSIVE_REPEAT", _c.MAX_REPEAT))
_ATOMIC = getattr(_c, "ATOMIC_GROUP", None)


def searcher(pattern: re.Pattern[str]) -> Search:
    """`pattern.search(text) is not None`, skipping the search when a required literal is absent."""
    search = pattern.search
    try:
        cond = _simplify(_needs(_p.parse(pattern.pattern, pattern.flags), bool(pattern.flags & re.IGNORECASE)))
    except (RecursionError, re.error):  # a pattern too deep to read: no pre-check
        cond = _TRUE
    if cond == _TRUE:
        return lambda text: search(text) is not None
    check = _compile(cond)
    if _has_ci(cond):
        return lambda text: check(text, text.lower() if text.isascii() else None) and search(text) is not None
    return lambda text: check(text, None) and search(text) is not None


def _needs(seq: Any, ci: bool) -> _Cond:
    """What any match of the parsed sequence `seq` needs the text to contain."""
    parts: list[_Cond] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            parts.append(("lit", "".join(run), ci))
            run.clear()

    for op, av in seq:
        if op is _c.LITERAL:
            run.append(chr(av))
            continue
        flush()
        if op is _c.SUBPATTERN:
            _group, add, remove, sub = av
            sub_ci = (ci or bool(add & re.IGNORECASE)) and not (remove & re.IGNORECASE)
            parts.append(_needs(sub, sub_ci))
        elif op is _c.BRANCH:
            parts.append(("any", tuple(_needs(alt, ci) for alt in av[1])))
        elif op in _REPEATS:
            low, _high, sub = av
            if low >= 1:
                parts.append(_needs(sub, ci))
        elif op is _ATOMIC:
            parts.append(_needs(av, ci))
        elif op is _c.IN and av and all(o is _c.LITERAL for o, _ in av):
            parts.append(("any", tuple(("lit", chr(ch), ci) for _, ch in av)))
        # anything else (ANY, classes, ranges, negations, anchors, assertions, back references,
        # conditionals) needs nothing we can check
    flush()
    return ("all", tuple(parts))


def _simplify(cond: _Cond) -> _Cond:
    """Drop conditions that always hold; an `any` with one always-true branch always holds."""
    kind = cond[0]
    if kind == "lit":
        text, ci = cond[1], cond[2]
        # Case-insensitive literals are checked on the lower-cased text, which is exact for ASCII only.
        return _TRUE if ci and not text.isascii() else cond
    subs = [_simplify(c) for c in cond[1]]
    if kind == "all":
        kept = tuple(c for c in subs if c != _TRUE)
        return kept[0] if len(kept) == 1 else ("all", kept)
    if not subs or any(c == _TRUE for c in subs):
        return _TRUE
    return subs[0] if len(subs) == 1 else ("any", tuple(subs))


# (text, its lower-case form when the text is ASCII, else None) -> may the pattern match?
_Check = Callable[[str, "str | None"], bool]


def _compile(cond: _Cond) -> _Check:
    kind = cond[0]
    if kind == "lit":
        text, ci = cond[1], cond[2]
        if not ci:
            return lambda t, _low: text in t
        low_text = text.lower()
        # Only an ASCII text lower-cases exactly as `re` folds case; for any other the literal may match.
        return lambda _t, low: low is None or low_text in low
    checks = tuple(_compile(c) for c in cond[1])
    if kind == "all":

        def every(t: str, low: str | None) -> bool:
            for check in checks:  # noqa: SIM110 (a loop: no generator per call)
                if not check(t, low):
                    return False
            return True

        return every

    def some(t: str, low: str | None) -> bool:
        for check in checks:  # noqa: SIM110
            if check(t, low):
                return True
        return False

    return some


def _has_ci(cond: _Cond) -> bool:
    return bool(cond[2]) if cond[0] == "lit" else any(_has_ci(c) for c in cond[1])
