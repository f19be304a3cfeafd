"""The model catalogue: models.yaml compiled into frozen `Model`s and the alias table.

Phase two of loading models.yaml (phase one is router/spec.py): names must be unique and not `auto`,
pools, context windows, capabilities and score categories valid, aliases must point to models and clash
with nothing, fallbacks must name known models without cycles. Each model's fallback chain is expanded
transitively once, here, so routing never walks the graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from router.spec import CAPABILITIES, ModelsFile, ModelSpec
from router.yamlsrc import PathT, Problems, Source, convert

__all__ = ["AUTO", "Catalogue", "Model", "load_catalogue"]

AUTO = "auto"  # the requested name that asks the router to choose; reserved, never a model or alias


@dataclass(frozen=True, slots=True, eq=False)
class Model:
    name: str
    pool: str
    context_window: int
    tier: int
    capabilities: frozenset[str]
    scores: Mapping[str, float]
    fallbacks: tuple[str, ...]  # the whole chain, expanded transitively, in order
    aliases: tuple[str, ...]
    description: str
    where: str  # file:line of its definition


Catalogue = tuple[dict[str, Model], dict[str, str]]  # (models by name, alias -> model)


def load_catalogue(src: Source, categories: frozenset[str] | None, problems: Problems) -> Catalogue | None:
    """models.yaml (already read) -> (models, aliases); None when it has errors (recorded in `problems`).

    `categories` are the classifier's, to check the models' scores against (None: not checked).
    """
    before = len(problems.items)
    data = src.data if src.data is not None else {}
    spec = convert(src, data, ModelsFile, (), problems)
    if spec is None:
        return None
    specs: dict[str, tuple[ModelSpec, PathT]] = {}
    broken: set[str] = set()  # models with errors of their own: references to them are not errors too
    for i, raw in enumerate(spec.models):
        path: PathT = ("models", i)
        m = convert(src, raw, ModelSpec, path, problems)
        if m is None:
            if isinstance(raw, dict) and isinstance(raw.get("name"), str):
                broken.add(raw["name"])
            continue
        if not m.name or m.name == AUTO:
            problems.add(src, (*path, "name"), f"invalid model name `{m.name}`")
            continue
        if m.name in specs:
            problems.add(src, (*path, "name"), f"duplicate model `{m.name}` (first at line "
                         f"{src.line(specs[m.name][1])})")
            continue
        specs[m.name] = (m, path)
        if not m.pool:
            problems.add(src, (*path, "pool"), "`pool` must name a worker pool")
        if m.context_window < 1:
            problems.add(src, (*path, "context_window"), "`context_window` must be >= 1")
        for cap in m.capabilities:
            if cap not in CAPABILITIES:
                problems.add(src, (*path, "capabilities"),
                             f"unknown capability `{cap}` (known: {', '.join(CAPABILITIES)})")
        if categories is not None:
            for cat in m.scores:
                if cat not in categories:
                    problems.add(src, (*path, "scores", cat),
                                 f"unknown category `{cat}` (known: {', '.join(sorted(categories))})")
    if not spec.models:
        problems.add(src, ("models",), "the catalogue has no models")

    # Aliases: per-model lists and the top-level mapping; none may clash with a model or with each other.
    aliases: dict[str, str] = {}
    alias_where: dict[str, PathT] = {}

    def add_alias(alias: str, target: str, path: PathT) -> None:
        if alias == AUTO:
            problems.add(src, path, "`auto` is reserved; it cannot be an alias")
        elif alias in specs:
            problems.add(src, path, f"alias `{alias}` clashes with the model of the same name "
                         f"(line {src.line(specs[alias][1])})")
        elif alias in aliases:
            problems.add(src, path, f"alias `{alias}` is defined twice (first at line {src.line(alias_where[alias])})")
        else:
            aliases[alias] = target
            alias_where[alias] = path

    for name, (m, path) in specs.items():
        for j, alias in enumerate(m.aliases):
            add_alias(alias, name, (*path, "aliases", j))
    for alias, target in spec.aliases.items():
        path = ("aliases", alias)
        if target not in specs:
            if target in broken:
                continue
            if target in spec.aliases or any(target in m.aliases for m, _ in specs.values()):
                problems.add(src, path, f"alias `{alias}` points to `{target}`, which is an alias; point it to a model")
            else:
                problems.add(src, path, f"alias `{alias}` points to `{target}`, which is not a model "
                             f"(models: {', '.join(specs)})")
            continue
        add_alias(alias, target, path)

    # Fallbacks: known models, no self-reference, no cycles; then each chain expanded once.
    for name, (m, path) in specs.items():
        for j, fb in enumerate(m.fallbacks):
            target = aliases.get(fb, fb)
            if target in broken:
                continue
            if target not in specs:
                problems.add(src, (*path, "fallbacks", j), f"unknown fallback model `{fb}`")
            elif target == name:
                problems.add(src, (*path, "fallbacks", j), f"model `{name}` cannot fall back to itself")
    if len(problems.items) != before:
        return None
    graph = {name: [aliases.get(fb, fb) for fb in m.fallbacks] for name, (m, _) in specs.items()}
    reported: set[frozenset[str]] = set()
    for start in graph:
        cycle = _find_cycle(start, graph)
        if cycle is not None and frozenset(cycle) not in reported:
            reported.add(frozenset(cycle))
            problems.add(src, (*specs[cycle[0]][1], "fallbacks"), "fallback cycle: " + " -> ".join(cycle))
    if len(problems.items) != before:
        return None

    models: dict[str, Model] = {}
    for name, (m, path) in specs.items():
        models[name] = Model(
            name=name,
            pool=m.pool,
            context_window=m.context_window,
            tier=m.tier,
            capabilities=frozenset(m.capabilities),
            scores=MappingProxyType(dict(m.scores)),
            fallbacks=tuple(_expand(name, graph)),
            aliases=tuple(a for a, t in aliases.items() if t == name),
            description=m.description,
            where=src.where(path),
        )
    return models, aliases


def _find_cycle(start: str, graph: Mapping[str, list[str]]) -> list[str] | None:
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in stack:
            return [*stack[stack.index(node):], node]
        stack.append(node)
        for nxt in graph.get(node, ()):
            found = visit(nxt)
            if found is not None:
                return found
        stack.pop()
        return None

    return visit(start)


def _expand(name: str, graph: Mapping[str, list[str]]) -> list[str]:
    out: list[str] = []

    def walk(node: str) -> None:
        for nxt in graph.get(node, ()):
            if nxt != name and nxt not in out:
                out.append(nxt)
                walk(nxt)

    walk(name)
    return out
