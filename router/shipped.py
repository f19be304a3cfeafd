"""Where the files shipped with the gateway are: the repository's policies/ and migrations/, installed as the
packages `gateway_policies` and `gateway_migrations` (pyproject.toml). Found through importlib.resources, so
the same lookup serves a checkout's editable install and an installed wheel, from any working directory.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

POLICIES = "gateway_policies"
MIGRATIONS = "gateway_migrations"


def package_dir(package: str) -> Path:
    """The directory holding a data package's files (always a directory on disk: wheels install unpacked)."""
    found = resources.files(package)
    if not isinstance(found, Path):
        raise RuntimeError(f"the package {package} is not a directory on disk ({found!r})")
    return found


def policies_dir() -> Path:
    """The shipped policies: the three policy files, prices.yaml, the predictor, the judge's prompt."""
    return package_dir(POLICIES)


def migrations_dir() -> Path:
    """The accounting database's Alembic environment (env.py) and its versions/."""
    return package_dir(MIGRATIONS)
