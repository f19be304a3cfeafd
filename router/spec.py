"""The policy files' raw schema (phase one): strict structs, unknown keys rejected.

Lists of items that each deserve their own error (models, rules, categories, signals, test cases) are
typed `Any` here and converted one by one, so a file reports every bad item instead of the first.
Cross-field rules (names that must exist, duplicates, cycles...) are phase two, in router/classifier.py,
router/catalogue.py and router/rules.py.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

import msgspec

__all__ = [
    "CAPABILITIES",
    "STRUCTURES",
    "CacheSpec",
    "CaseSpec",
    "CategorySpec",
    "CheapestAboveSpec",
    "ClassifyFile",
    "ComplexitySpec",
    "DefaultsSpec",
    "ExpectSpec",
    "MatchSpec",
    "ModelSpec",
    "ModelsFile",
    "QualityRange",
    "RangeSpec",
    "RatesSpec",
    "RequestLimitsSpec",
    "RouteSpec",
    "RoutingFile",
    "RuleSpec",
    "SignalSpec",
    "TestsFile",
]

# What a request may need and a model may offer.
CAPABILITIES: dict[str, str] = {
    "tools": "tool calls",
    "json_schema": "JSON-schema output",
    "json_object": "JSON-object output",
    "logprobs": "logprobs",
    "n": "several choices (n > 1)",
    "vision": "image input",
    "audio": "audio input",
    "long_context": "long context",
}
STRUCTURES = ("code_fence", "json_block", "markdown_table", "latex")

Names = str | tuple[str, ...]


class RangeSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Inclusive bounds; either may be omitted."""

    min: int | None = None
    max: int | None = None


# ------------------------------------------------------------------------------------------------ models.yaml


class ModelSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    name: str
    pool: str
    context_window: int
    tier: int
    capabilities: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    scores: dict[str, float] = {}
    fallbacks: tuple[str, ...] = ()
    description: str = ""


class ModelsFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    models: list[Any]
    aliases: dict[str, str] = {}


# ---------------------------------------------------------------------------------------------- classify.yaml


class TokensSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    exact_chars: int = 4096
    sample_chars: int = 768
    per_message: int = 3
    per_request: int = 3
    image_tokens: int = 765
    default_output_tokens: int = 256


class ScanSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    head_chars: int = 400
    tail_chars: int = 400
    system_chars: int = 160
    fence_chars: int = 65536


class SignalSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Conditions that must all hold for the signal to fire; it then adds `weight` to a score."""

    name: str | None = None
    weight: int = 1
    keywords: tuple[str, ...] = ()
    regex: str | None = None
    structure: str | None = None
    capabilities: Names = ()
    any_capability: Names = ()
    category: Names = ()
    kind: Names = ()
    prompt_tokens: RangeSpec | None = None
    max_tokens: RangeSpec | None = None
    context_tokens: RangeSpec | None = None
    turns: RangeSpec | None = None


class CategorySpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    min_score: int = 1
    signals: list[Any]


class TierSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    tier: int
    min_score: int


class ComplexitySpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    signals: list[Any] = []
    tiers: list[Any] = []


class OutputHintSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A length asked for in the text: the regex's first group is a number of units, each this many tokens."""

    regex: str
    tokens_per_unit: float


class ClassifyFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    tokens: TokensSpec = TokensSpec()
    output_hints: list[Any] = []
    scan: ScanSpec = ScanSpec()
    long_context_tokens: int = 4096
    default_category: str = "chat"
    categories: dict[str, Any] = {}
    complexity: ComplexitySpec = ComplexitySpec()


# ----------------------------------------------------------------------------------------------- routing.yaml


class MatchSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    tenant: Names | None = None
    team: Names | None = None
    key_id: Names | None = None
    headers: dict[str, Names] | None = None
    model: Names | None = None
    requested: Names | None = None
    kind: Names | None = None
    category: Names | None = None
    tier: RangeSpec | None = None
    prompt_tokens: RangeSpec | None = None
    max_tokens: RangeSpec | None = None
    context_tokens: RangeSpec | None = None
    turns: RangeSpec | None = None
    capabilities: Names | None = None
    any_capability: Names | None = None
    not_capabilities: Names | None = None
    stream: bool | None = None
    deterministic: bool | None = None


class SmallestCapableSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    min_tier: int | Literal["complexity"] | None = None
    candidates: tuple[str, ...] | None = None
    min_score: float | None = None


class CheapestAboveSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The cheapest candidate predicted good enough: at least `quality` (absolute), and/or at least
    `relative` times the best candidate's predicted quality. Neither: the policy's `quality_target`."""

    quality: float | None = None
    relative: float | None = None
    candidates: tuple[str, ...] | None = None
    min_tier: int | None = None


class RouteSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    smallest_capable: SmallestCapableSpec | None = None
    cheapest_above: CheapestAboveSpec | None = None
    model: str | None = None


class CacheSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    ttl_s: int
    when: Literal["deterministic", "always"] = "deterministic"
    namespace: str | None = None


CacheField = Literal["no-store"] | CacheSpec


class RuleSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    name: str
    description: str = ""
    match: MatchSpec = MatchSpec()
    route: Literal["smallest_capable", "cheapest_above", "requested"] | RouteSpec | None = None
    deny: str | None = None
    max_tokens: int | None = None
    cache: CacheField | None = None
    fallbacks: tuple[str, ...] | None = None
    reference_model: str | None = None


class RequestLimitsSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """`defaults.request_limits`: how large one request may be, checked before it is routed (400 past them;
    router/request_limits.py). The defaults follow OpenAI's published limits where it has them."""

    max_n: int = 128  # choices per prompt (OpenAI's limit)
    max_best_of: int = 20  # completions' `best_of` (OpenAI's limit)
    max_prompts: int = 1024  # prompts of one /v1/completions call (vLLM's VLLM_MAX_COMPLETION_PROMPTS)
    max_sequences: int = 1024  # sequences one call generates: prompts x `n` (or `best_of`, the larger)
    max_logprobs: int = 5  # completions' `logprobs` (OpenAI's limit)
    max_top_logprobs: int = 20  # chat's `top_logprobs` and vLLM's `prompt_logprobs` (OpenAI's and vLLM's limit)
    max_tools: int = 128  # `tools` (or the older `functions`) of one call (OpenAI's limit)
    max_messages: int = 2048  # `messages` of one chat call
    max_depth: int = 64  # nesting of the JSON body (the object itself is level 1)
    max_tokens: int | None = None  # `max_tokens` / `max_completion_tokens`; none: the largest context window


class DefaultsSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    max_tokens: int | None = None
    cache: CacheField | None = None
    reference_model: str | None = None
    predictor: str | None = None  # the learned quality predictor: a directory (or file) in the policy directory
    # The cost/quality knob: by default `cheapest_above` accepts a model predicted to give at least this
    # share of the best candidate's predicted quality.
    quality_target: float | None = None
    request_limits: RequestLimitsSpec = RequestLimitsSpec()


class RoutingFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    defaults: DefaultsSpec = DefaultsSpec()
    rules: list[Any]


# ------------------------------------------------------------------------------------------- tests/*.yaml


class RatesSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    input_per_million: Decimal
    output_per_million: Decimal
    cached_input_per_million: Decimal | None = None
    currency: str = "USD"


class HealthSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    healthy: bool = True
    load: float = 0.0


class CallerSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    tenant: str | None = "default"
    team: str | None = None
    key_id: str | None = None


class ErrorExpect(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    status: int | None = None
    code: str | None = None
    message: str | None = None  # a substring of the error message


class CacheExpect(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    store: bool | None = None
    ttl_s: int | None = None
    namespace: str | None = None


class QualityRange(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Inclusive bounds on a predicted quality; either may be omitted."""

    min: float | None = None
    max: float | None = None


class ExpectSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    model: str | None = None
    rule: str | None = None
    pool: str | None = None
    fallbacks: tuple[str, ...] | None = None
    max_tokens: int | None = None
    cache: Literal["no-store"] | CacheExpect | None = None
    category: str | None = None
    tier: int | None = None
    capabilities: tuple[str, ...] | None = None
    quality: dict[str, QualityRange] | None = None  # predicted quality per model
    error: ErrorExpect | None = None


class CaseSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    name: str
    request: dict[str, Any]
    kind: Literal["chat", "completion"] | None = None
    model: str | None = None
    headers: dict[str, str] = {}
    caller: CallerSpec = CallerSpec()
    health: dict[str, HealthSpec] | None = None
    rates: dict[str, RatesSpec] | None = None
    expect: ExpectSpec


class TestsFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    health: dict[str, HealthSpec] | None = None
    rates: dict[str, RatesSpec] | None = None
    cases: list[Any]
