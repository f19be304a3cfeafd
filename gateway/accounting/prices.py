"""The price catalogue: `policies/prices.yaml` -> immutable, versioned prices, and the cost of a call.

Two modes per model and effective date:

- `per_token`: prices per million input, cached input and output tokens;
- `gpu_time`: a pool's GPU-hour price turned into a per-call cost by the replica's sustained
  throughput (see `Price.cost`):

      cost = gpu_hour_price * gpus * ((prompt - cached) / prefill_tokens_per_s
                                      + completion / decode_tokens_per_s) / 3600

Every entry becomes a `Price` whose id names the model, the effective date and a digest of the
content, so changing a price (even in place) makes a new version and never alters an old one.
Amounts are Decimal, rounded once per call, half to even, to 10 decimal places.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from gateway.accounting.money import ZERO, quantize
from router.pricing import TokenRates
from router.shipped import policies_dir

# The shipped catalogue, found relative to the package (works from any working directory).
DEFAULT_PRICES_FILE = policies_dir() / "prices.yaml"

MILLION = Decimal(1_000_000)
SECONDS_PER_HOUR = 3600
# Enough digits that one division then one rounding to 10 places is the correctly rounded result.
_EXACT = Context(prec=60, rounding=ROUND_HALF_EVEN)


class PricesError(Exception):
    """The price file cannot be used; the message names the file, the line and the problem."""


@dataclass(frozen=True, slots=True)
class Price:
    """One immutable version of one model's price."""

    id: str
    model: str
    mode: Literal["per_token", "gpu_time"]
    currency: str
    effective_from: datetime
    input_per_million: Decimal
    cached_input_per_million: Decimal
    output_per_million: Decimal
    gpu_hour_price: Decimal | None = None
    gpus: Decimal | None = None
    prefill_tokens_per_s: int | None = None
    decode_tokens_per_s: int | None = None

    @property
    def effective_ts(self) -> float:
        return self.effective_from.timestamp()

    def cost(self, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> Decimal:
        """The cost of one call. `prompt_tokens` includes `cached_tokens` (OpenAI's and vLLM's usage)."""
        uncached = max(prompt_tokens - cached_tokens, 0)
        cached = prompt_tokens - uncached
        if self.mode == "gpu_time":
            assert self.gpu_hour_price is not None and self.gpus is not None
            assert self.prefill_tokens_per_s is not None and self.decode_tokens_per_s is not None
            prefill, decode = self.prefill_tokens_per_s, self.decode_tokens_per_s
            # gpu_hour_price * gpus * (uncached/prefill + completion/decode) / 3600, as one division.
            num = _EXACT.multiply(
                _EXACT.multiply(self.gpu_hour_price, self.gpus),
                Decimal(uncached * decode + completion_tokens * prefill),
            )
            return quantize(_EXACT.divide(num, Decimal(SECONDS_PER_HOUR * prefill * decode)))
        num = _EXACT.add(
            _EXACT.add(_EXACT.multiply(Decimal(uncached), self.input_per_million),
                       _EXACT.multiply(Decimal(cached), self.cached_input_per_million)),
            _EXACT.multiply(Decimal(completion_tokens), self.output_per_million),
        )
        return quantize(_EXACT.divide(num, MILLION))

    def rates(self) -> TokenRates:
        return TokenRates(
            input_per_million=self.input_per_million,
            cached_input_per_million=self.cached_input_per_million,
            output_per_million=self.output_per_million,
            currency=self.currency,
        )

    def row(self, loaded_at: datetime) -> dict[str, Any]:
        """The `price_versions` row of this version."""
        return {
            "id": self.id, "model": self.model, "mode": self.mode, "currency": self.currency,
            "effective_from": self.effective_from, "input_per_million": self.input_per_million,
            "cached_input_per_million": self.cached_input_per_million,
            "output_per_million": self.output_per_million, "gpu_hour_price": self.gpu_hour_price,
            "gpus": self.gpus, "prefill_tokens_per_s": self.prefill_tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s, "loaded_at": loaded_at,
        }


@dataclass(frozen=True)
class PriceCatalogue:
    currency: str
    reference_model: str | None
    versions: Mapping[str, tuple[Price, ...]]  # per model, oldest first
    source: str = ""

    @classmethod
    def empty(cls, currency: str = "USD") -> PriceCatalogue:
        return cls(currency, None, {}, "")

    def price_at(self, model: str | None, ts: float) -> Price | None:
        """The version of `model`'s price in effect at `ts` (epoch seconds), if any."""
        versions = self.versions.get(model) if model else None
        if not versions:
            return None
        for price in reversed(versions):
            if price.effective_ts <= ts:
                return price
        return None

    def all_prices(self) -> list[Price]:
        return [p for versions in self.versions.values() for p in versions]

    def models(self) -> list[str]:
        return sorted(self.versions)


def current_token_rates(catalogue: PriceCatalogue, now: datetime) -> dict[str, TokenRates]:
    """Per model, the per-token rates in effect at `now` (for gpu_time prices, their equivalents).

    For the router (cost-aware decisions). Pure: the time is passed in.
    """
    ts = now.timestamp()
    rates = {}
    for model in catalogue.versions:
        price = catalogue.price_at(model, ts)
        if price is not None:
            rates[model] = price.rates()
    return rates


# --- the file -----------------------------------------------------------------------------------


class _PerToken(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    input_per_million: Decimal
    output_per_million: Decimal
    cached_input_per_million: Decimal | None = None  # default: the input price


class _GpuTime(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    gpu_hour_price: Decimal  # per GPU
    gpus: Decimal = Decimal(1)  # GPUs per replica
    prefill_tokens_per_s: int  # the replica's sustained prompt throughput
    decode_tokens_per_s: int  # the replica's sustained generation throughput (all running requests)


class _Entry(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    effective_from: str
    per_token: _PerToken | None = None
    gpu_time: _GpuTime | None = None


class _File(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    currency: str
    reference_model: str | None = None
    models: dict[str, list[Any]] = {}


class _Loader(yaml.SafeLoader):
    """YAML with exact numbers (floats become Decimal) and dates kept as text (parsed strictly below)."""


def _decimal(loader: _Loader, node: yaml.ScalarNode) -> Decimal:
    return Decimal(loader.construct_scalar(node).replace("_", ""))


def _text(loader: _Loader, node: yaml.ScalarNode) -> str:
    return loader.construct_scalar(node)  # as PyYAML's construct_yaml_str


_Loader.add_constructor("tag:yaml.org,2002:float", _decimal)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _text)

_CURRENCY = re.compile(r"[A-Z]{3}")
_MSGSPEC_AT = re.compile(r" - at `\$([^`]*)`$")


def _child(node: yaml.Node | None, key: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        pairs: list[tuple[yaml.Node, yaml.Node]] = node.value
        for k, v in pairs:
            if k.value == key:
                return v
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
        items: list[yaml.Node] = node.value
        return items[key]
    return None


def _at(node: yaml.Node | None, path: str) -> yaml.Node | None:
    """The node at a msgspec error path such as `.per_token.input_per_million` or `[0]`."""
    for name, index in re.findall(r"\.(\w+)|\[(\d+)\]", path):
        found = _child(node, name if name else int(index))
        if found is None:
            break
        node = found
    return node


def parse_effective(text: str) -> datetime:
    """`2026-01-01` (midnight UTC) or an ISO 8601 time; without an offset, UTC."""
    try:
        value = datetime.fromisoformat(str(text))
    except ValueError as exc:
        raise ValueError(f"effective_from `{text}` is not a date (YYYY-MM-DD) or ISO 8601 time") from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _digest(fields: Iterable[object]) -> str:
    return hashlib.sha256("|".join(str(f) for f in fields).encode()).hexdigest()[:10]


def _make_price(model: str, currency: str, entry: _Entry) -> Price:
    effective = parse_effective(entry.effective_from)
    if (entry.per_token is None) == (entry.gpu_time is None):
        raise ValueError("give exactly one of `per_token` or `gpu_time`")
    if entry.per_token is not None:
        pt = entry.per_token
        cached = pt.input_per_million if pt.cached_input_per_million is None else pt.cached_input_per_million
        for name, value in (("input_per_million", pt.input_per_million), ("cached_input_per_million", cached),
                            ("output_per_million", pt.output_per_million)):
            if not value.is_finite() or value < 0:
                raise ValueError(f"per_token.{name} must be a number >= 0")
        content: tuple[object, ...] = ("per_token", currency, effective.isoformat(), pt.input_per_million.normalize(),
                   cached.normalize(), pt.output_per_million.normalize())
        return Price(
            id=f"{model}@{effective.date().isoformat()}#{_digest(content)}", model=model, mode="per_token",
            currency=currency, effective_from=effective, input_per_million=quantize(pt.input_per_million),
            cached_input_per_million=quantize(cached), output_per_million=quantize(pt.output_per_million),
        )
    gt = entry.gpu_time
    assert gt is not None
    if not gt.gpu_hour_price.is_finite() or gt.gpu_hour_price < 0:
        raise ValueError("gpu_time.gpu_hour_price must be a number >= 0")
    if not gt.gpus.is_finite() or gt.gpus <= 0:
        raise ValueError("gpu_time.gpus must be > 0")
    if gt.prefill_tokens_per_s <= 0 or gt.decode_tokens_per_s <= 0:
        raise ValueError("gpu_time.prefill_tokens_per_s and decode_tokens_per_s must be > 0")
    per_hour_million = _EXACT.multiply(_EXACT.multiply(gt.gpu_hour_price, gt.gpus), MILLION)
    content = ("gpu_time", currency, effective.isoformat(), gt.gpu_hour_price.normalize(), gt.gpus.normalize(),
               gt.prefill_tokens_per_s, gt.decode_tokens_per_s)
    return Price(
        id=f"{model}@{effective.date().isoformat()}#{_digest(content)}", model=model, mode="gpu_time",
        currency=currency, effective_from=effective,
        input_per_million=quantize(
            _EXACT.divide(per_hour_million, Decimal(SECONDS_PER_HOUR * gt.prefill_tokens_per_s))),
        cached_input_per_million=ZERO,  # cached prompt tokens skip prefill: no GPU time
        output_per_million=quantize(
            _EXACT.divide(per_hour_million, Decimal(SECONDS_PER_HOUR * gt.decode_tokens_per_s))),
        gpu_hour_price=gt.gpu_hour_price, gpus=gt.gpus,
        prefill_tokens_per_s=gt.prefill_tokens_per_s, decode_tokens_per_s=gt.decode_tokens_per_s,
    )


def parse_prices(text: str, source: str = "<prices>") -> PriceCatalogue:
    """Strict parse, then validation across entries; errors say `file:line: problem`."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        raise PricesError(f"{source}: not valid YAML: {exc}") from exc
    finally:
        loader.dispose()

    def fail(node: yaml.Node | None, message: str) -> PricesError:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        return PricesError(f"{source}{line}: {message}")

    if not isinstance(data, dict):
        raise fail(root, "the top level must be a mapping with `currency` and `models`")
    try:
        parsed = msgspec.convert(data, _File)
    except msgspec.ValidationError as exc:
        at = _MSGSPEC_AT.search(str(exc))
        raise fail(_at(root, at.group(1)) if at else root, _MSGSPEC_AT.sub("", str(exc))) from exc
    if not _CURRENCY.fullmatch(parsed.currency):
        raise fail(_child(root, "currency"), f"currency `{parsed.currency}` is not an ISO 4217 code such as USD")
    models_node = _child(root, "models")
    versions: dict[str, tuple[Price, ...]] = {}
    for model, entries in parsed.models.items():
        model_node = _child(models_node, model)
        if not entries:
            raise fail(model_node, f"model `{model}` has no price entries")
        prices = []
        for i, raw in enumerate(entries):
            entry_node = _child(model_node, i)
            try:
                entry = msgspec.convert(raw, _Entry)
                prices.append(_make_price(model, parsed.currency, entry))
            except msgspec.ValidationError as exc:
                at = _MSGSPEC_AT.search(str(exc))
                node = _at(entry_node, at.group(1)) if at else entry_node
                raise fail(node, f"{model}[{i}]: {_MSGSPEC_AT.sub('', str(exc))}") from exc
            except ValueError as exc:
                raise fail(entry_node, f"{model}[{i}]: {exc}") from exc
        prices.sort(key=lambda p: p.effective_from)
        for a, b in itertools.pairwise(prices):
            if a.effective_from == b.effective_from:
                raise fail(model_node, f"model `{model}` has two prices effective from {a.effective_from.isoformat()}")
        versions[model] = tuple(prices)
    if parsed.reference_model is not None and parsed.reference_model not in versions:
        raise fail(_child(root, "reference_model"),
                   f"reference_model `{parsed.reference_model}` has no price in this file")
    return PriceCatalogue(parsed.currency, parsed.reference_model, versions, source)


def load_prices(path: str | Path) -> PriceCatalogue:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PricesError(f"cannot read price file {path}: {exc.strerror}") from exc
    return parse_prices(text, str(path))


def utc_date(ts: float) -> date:
    return datetime.fromtimestamp(ts, UTC).date()
