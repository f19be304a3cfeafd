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
from router.predictor import PREDICTOR_FILE, Predictor, parse_predictor
from router.request_limits import DEFAULT_LIMITS, RequestLimits, compile_limits
from router.rules import RequestKind, Rule, load_rules
from router.shipped import policies_dir
from router.yamlsrc import Problems, Source, read_yaml

__all__ = [
    "AUTO",
    "POLICY_FILES",
    "PolicySet",
    "default_policy_dir",
    "load_classifier",
    "load_policy_set",
    "predictor_path",
    "read_policy_set",
]

POLICY_FILES = ("models.yaml", "classify.yaml", "routing.yaml")


def default_policy_dir() -> Path:
    """The shipped policies (the repository's `policies/`, installed as `gateway_policies`), from any cwd."""
    return policies_dir()


@dataclass(frozen=True, eq=False)
class PolicySet:
    """One validated, immutable routing policy."""

    directory: Path
    files: tuple[str, ...]
    hash: str  # sha256 of the files' contents, the predictor's included
    models: Mapping[str, Model]
    aliases: Mapping[str, str]  # alias -> model
    classifier: Classifier
    rules: tuple[Rule, ...]
    default_rule: Rule  # applies when no rule matches
    lookup: Mapping[str, tuple[RequestKind, str | None]]  # requested name -> (kind, model)
    predictor: Predictor | None = None  # the learned quality predictor
    predictor_ref: str | None = None  # `defaults.predictor` as written: where it is, from `directory`
    quality_target: float | None = None  # `defaults.quality_target`: the policy's cost/quality knob
    request_limits: RequestLimits = DEFAULT_LIMITS  # `defaults.request_limits`: how large one request may be

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


def load_classifier(directory: Path | str | None = None) -> Classifier:
    """Only the policy's classifier (classify.yaml), e.g. to compute features for training: it does not
    depend on the catalogue, the rules or the predictor (which training may be about to replace)."""
    folder = Path(directory) if directory is not None else default_policy_dir()
    problems = Problems()
    path = folder / "classify.yaml"
    if path.exists():
        source = read_yaml(path, str(path), problems, path.read_bytes())
    else:
        source = Source(str(path), {}, {(): 1})
    classifier = compile_classifier(source, problems) if source is not None and not problems else None
    if classifier is None:
        raise PolicyError(problems.items or [f"{path}:1: the classifier could not be loaded"])
    return classifier


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
    predictor, predictor_file = _read_predictor(folder, src_routing, problems)
    if predictor_file is not None:
        files.append(predictor_file[0])
        digest.update(b"predictor\0" + predictor_file[1] + b"\0")
    heads = frozenset(predictor.heads) if predictor is not None else None
    categories = classifier.known_categories if classifier is not None else None
    catalogue = load_catalogue(src_models, categories, problems)
    if catalogue is None or classifier is None:
        load_rules(src_routing, None, classifier, heads, problems)  # still report what can be checked
        return None, problems.items
    rules = load_rules(src_routing, catalogue, classifier, heads, problems)
    if problems or rules is None:
        return None, problems.items
    models, aliases = catalogue
    limits = compile_limits(src_routing, [m.context_window for m in models.values()], problems)
    if limits is None:
        return None, problems.items
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
        predictor=predictor,
        predictor_ref=_predictor_ref(src_routing) if predictor is not None else None,
        quality_target=_quality_target(src_routing),
        request_limits=limits,
    )
    return policy, []


def _defaults(src: Source) -> dict[str, object]:
    data = src.data
    defaults = data.get("defaults") if isinstance(data, dict) else None
    return defaults if isinstance(defaults, dict) else {}


def _quality_target(src: Source) -> float | None:
    value = _defaults(src).get("quality_target")  # validated by load_rules
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _predictor_ref(src: Source) -> str | None:
    ref = _defaults(src).get("predictor")
    return ref if isinstance(ref, str) and ref else None  # absent, or a type error that phase one reports


def predictor_path(directory: Path, ref: str) -> Path:
    """The file `defaults.predictor: ref` names: ref's predictor.json when ref is a directory, else ref."""
    path = directory / ref
    return path / PREDICTOR_FILE if path.is_dir() else path


def _read_predictor(folder: Path, src: Source, problems: Problems) -> tuple[Predictor | None, tuple[str, bytes] | None]:
    """The predictor `defaults.predictor` names (a directory holding predictor.json, or a file), read now:
    routing never reads files. Its problems are reported at that line of routing.yaml."""
    ref = _predictor_ref(src)
    if ref is None:
        return None, None
    path = predictor_path(folder, ref)
    where = ("defaults", "predictor")
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.add(src, where, f"cannot read the predictor {path}: {exc.strerror or exc}")
        return None, None
    predictor, found = parse_predictor(data)
    for problem in found:
        problems.add(src, where, f"predictor {path}: {problem}")
    return predictor, (str(path), data)
