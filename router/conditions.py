"""Match conditions of routing rules: each is a closure that passes a request (None) or says why not,
in words that `explain` shows."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from router.classify import Features
from router.decision import Caller

REQUESTED_KINDS = ("auto", "alias", "model")

# A compiled match condition: None when the request passes it, else why not.
Cond = Callable[[Features, Caller, str, str], "str | None"]


def shown_value(value: object) -> str:
    return "(none)" if value is None else f"`{value}`"


def names_text(values: Iterable[str]) -> str:
    return ", ".join(values)


def range_text(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f"{lo}..{hi}"
    return f">= {lo}" if lo is not None else f"<= {hi}"


def member_cond(label: str, get: Callable[[Features, Caller, str, str], object], allowed: frozenset[str],
                 shown: str) -> Cond:
    def cond(f: Features, c: Caller, name: str, kind: str) -> str | None:
        value = get(f, c, name, kind)
        if value in allowed:
            return None
        return f"{label} {shown_value(value)} is not one of {shown}"

    return cond


def range_cond(label: str, get: Callable[[Features], int], lo: int | None, hi: int | None) -> Cond:
    low = lo if lo is not None else -(2**62)
    high = hi if hi is not None else 2**62
    text = range_text(lo, hi)

    def cond(f: Features, c: Caller, name: str, kind: str) -> str | None:
        value = get(f)
        if low <= value <= high:
            return None
        return f"{label} {value} is not {text}"

    return cond


GETTERS: dict[str, Callable[[Features, Caller, str, str], object]] = {
    "tenant": lambda f, c, n, k: c.tenant,
    "team": lambda f, c, n, k: c.team,
    "key_id": lambda f, c, n, k: c.key_id,
    "model": lambda f, c, n, k: n,
    "kind": lambda f, c, n, k: f.kind,
    "category": lambda f, c, n, k: f.category,
}
RANGES: dict[str, Callable[[Features], int]] = {
    "tier": lambda f: f.tier,
    "prompt_tokens": lambda f: f.prompt_tokens,
    "max_tokens": lambda f: f.output_tokens,
    "context_tokens": lambda f: f.prompt_tokens + f.output_tokens,
    "turns": lambda f: f.turns,
}
LABELS = {
    "tenant": "tenant", "team": "team", "key_id": "key id", "model": "requested model",
"kind": "kind", "category": "category",
}


KIND_WORDS = {"auto": "`auto`", "alias": "an alias", "model": "a model name"}


def requested_cond(allowed: frozenset[str], shown: str) -> Cond:
    wanted = " or ".join(KIND_WORDS[k] for k in REQUESTED_KINDS if k in allowed)

    def cond(f: Features, c: Caller, name: str, kind: str) -> str | None:
        if kind in allowed:
            return None
        if kind == "auto":
            return f"`auto` was requested, not {wanted}"
        return f"`{name}` ({KIND_WORDS[kind]}) was requested, not {wanted}"

    return cond


def header_cond(name: str, allowed: frozenset[str] | None, shown: str) -> Cond:
    def cond(f: Features, c: Caller, n: str, k: str) -> str | None:
        value = f.headers.get(name)
        if value is None:
            return f"header `{name}` is absent"
        if allowed is None or value in allowed:
            return None
        return f"header `{name}` is `{value}`, not one of {shown}"

    return cond


def caps_cond(key: str, caps: frozenset[str]) -> Cond:
    shown = names_text(sorted(caps))
    if key == "capabilities":
        def cond(f: Features, c: Caller, n: str, k: str) -> str | None:
            missing = caps - f.capabilities
            return f"does not need {names_text(sorted(missing))}" if missing else None
    elif key == "any_capability":
        def cond(f: Features, c: Caller, n: str, k: str) -> str | None:
            return None if not caps.isdisjoint(f.capabilities) else f"needs none of {shown}"
    else:
        def cond(f: Features, c: Caller, n: str, k: str) -> str | None:
            extra = caps & f.capabilities
            return f"needs {names_text(sorted(extra))}" if extra else None
    return cond


def bool_cond(key: str, want: bool) -> Cond:
    def cond(f: Features, c: Caller, n: str, k: str) -> str | None:
        value = bool(getattr(f, key))
        return None if value == want else f"{key} is {str(value).lower()}, not {str(want).lower()}"

    return cond
