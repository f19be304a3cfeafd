"""Which concrete model a requested name means.

Until routing policies land, `auto` goes to a configured default model and a concrete name to itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.errors import ModelNotFound

AUTO = "auto"


@dataclass(frozen=True)
class Catalogue:
    models: tuple[str, ...]
    default_model: str

    def resolve(self, requested: str) -> str:
        if requested == AUTO:
            return self.default_model
        if requested in self.models:
            return requested
        raise ModelNotFound(
            f"The model `{requested}` does not exist. Valid models: {', '.join(self.routable())}.",
            param="model",
        )

    def routable(self) -> tuple[str, ...]:
        return (AUTO, *sorted(self.models))
