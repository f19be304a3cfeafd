"""The routing policy: the three policy files read, hashed and compiled into one immutable `PolicySet`.

Two phases, as in TensorZero's configuration: (1) each file is read as YAML nodes with their line
numbers and strictly converted into the structs of router/spec.py (unknown keys and wrong types are
errors); (2) cross-field validation (names that must exist, duplicates, alias clashes, fallback cycles,
rules that can never match) compiles the result into frozen objects whose hot-path work is done
up front: classify.yaml in router/classifier.py, models.yaml in router/catalogue.py, routing.yaml in
router/rules.py. Every problem is reported as `file:line: message`; `load_policy_set` raises
`PolicyError` with all of them, or returns a new `PolicySet`. Nothing is global: hot reload is "load,
and on success swap the reference".
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from router.catalogue import AUTO, Model, load_catalogue
from router.classifier import Classifier, compile_classifier
from router.errors import PolicyError
from router.rules import RequestKind, Rule, load_rules
from router.yamlsrc import Problems, Source, read_yaml

__all__ = [
    "AUTO",
    "POLICY_FILES",
    "PolicySet",
    "default_policy_dir",
    "load_policy_set",
    "read_policy_set",
]

POLICY_FILES = ("models.yaml", "classify.yaml", "routing.yaml")


def default_policy_dir() -> Path:
    """The repository's `policies/` directory (resolved from this package, so any cwd works)."""
    return Path(__file__).resolve().parent.parent / "policies"


@dataclass(frozen=True, eq=False)
class PolicySet:
    """One validated, immutable routing policy."""

    directory: Path
    files: tuple[str, ...]
    hash: str  # sha256 of the files' contents
    models: Mapping[str, Model]
    aliases: Mapping[str, str]  # alias -> model
    classifier: Classifier
    rules: tuple[Rule, ...]
    default_rule: Rule  # applies when no rule matches
    lookup: Mapping[str, tuple[RequestKind, str | None]]  # requested name -> (kind, model)

    def routable_names(self) -> tuple[str, ...]:
        """What clients may put in `model` (for /v1/models): `auto`, the models, then the aliases."""
        return (AUTO, *self.models, *sorted(self.aliases))

    def resolve(self, name: str) -> str | None:
        """The model a requested name means (None for `auto` and for unknown names)."""
        entry = self.lookup.get(name)
        return entry[1] if entry is not None else None

    def pools(self) -> frozenset[str]:
        return frozenset(m.pool for m in self.models.values())

    def check_pools(self, configured: Iterable[str]) -> list[str]:
        """Models whose pool is not among the gateway's configured pools (they can never be chosen)."""
        have = set(configured)
        return [
            f"{m.where}: model `{m.name}` is served by pool `{m.pool}`, which is not configured"
            for m in self.models.values()
            if m.pool not in have
        ]

    def rule(self, name: str) -> Rule | None:
        for r in self.rules:
            if r.name == name:
                return r
        return self.default_rule if name == self.default_rule.name else None


def load_policy_set(directory: Path | str | None = None) -> PolicySet:
    """Load and validate the policy in `directory` (default: the shipped `policies/`).

    Returns a new PolicySet, or raises PolicyError whose `errors` are `file:line: message` strings.
    """
    policy, problems = read_policy_set(directory)
    if policy is None:
        raise PolicyError(problems or ["the policy could not be loaded"])
    return policy


def read_policy_set(directory: Path | str | None = None) -> tuple[PolicySet | None, list[str]]:
    """Like load_policy_set, without raising: (policy or None, problems)."""
    folder = Path(directory) if directory is not None else default_policy_dir()
    problems = Problems()
    if not folder.is_dir():
        problems.add_at(str(folder), 1, "not a directory")
        return None, problems.items
    sources: dict[str, Source | None] = {}
    digest = hashlib.sha256()
    files: list[str] = []
    for name in POLICY_FILES:
        path = folder / name
        if not path.exists():
            if name == "classify.yaml":  # optional: no categories, one tier
                sources[name] = Source(str(path), {}, {(): 1})
                continue
            problems.add_at(str(path), 1, "missing policy file")
            sources[name] = None
            continue
        files.append(str(path))
        try:
            content = path.read_bytes()  # read once: the hash and the policy come from the same bytes
        except OSError as exc:
            problems.add_at(str(path), 1, f"cannot read the file: {exc}")
            sources[name] = None
            continue
        digest.update(name.encode() + b"\0" + content + b"\0")
        sources[name] = read_yaml(path, str(path), problems, content)
    classifier = None
    src_classify = sources["classify.yaml"]
    if src_classify is not None:
        if src_classify.data is not None and not isinstance(src_classify.data, dict):
            problems.add(src_classify, (), "the top level must be a mapping")
        else:
            classifier = compile_classifier(src_classify, problems)
    src_models, src_routing = sources["models.yaml"], sources["routing.yaml"]
    if src_models is None or src_routing is None:
        return None, problems.items
    categories = classifier.known_categories if classifier is not None else None
    catalogue = load_catalogue(src_models, categories, problems)
    if catalogue is None or classifier is None:
        load_rules(src_routing, None, classifier, problems)  # still report what can be checked
        return None, problems.items
    rules = load_rules(src_routing, catalogue, classifier, problems)
    if problems or rules is None:
        return None, problems.items
    models, aliases = catalogue
    rule_list, default_rule = rules
    header_names = frozenset(h for r in rule_list for h in r.constraints.get("headers", {}))
    classifier = dataclasses.replace(classifier, header_names=header_names)
    lookup: dict[str, tuple[RequestKind, str | None]] = {AUTO: ("auto", None)}
    for name in models:
        lookup[name] = ("model", name)
    for alias, target in aliases.items():
        lookup[alias] = ("alias", target)
    policy = PolicySet(
        directory=folder,
        files=tuple(files),
        hash=digest.hexdigest(),
        models=MappingProxyType(models),
        aliases=MappingProxyType(aliases),
        classifier=classifier,
        rules=rule_list,
        default_rule=default_rule,
        lookup=MappingProxyType(lookup),
    )
    return policy, []
