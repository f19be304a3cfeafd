"""Installing a predictor into a policy: the file `defaults.predictor` names, replaced atomically.

The new artefact is first checked the way the gateway will check it, by loading a copy of the policy
(its three files, the predictor at the same relative place) with the new predictor in it: a predictor
the policy would refuse (a rule's candidate without a head) is never written. The write is a temporary
file in the target's directory, then `os.replace`: the gateway's policy watcher sees either the old file
or the new one, never a part, and hot-reloads it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from gateway.learning.dataset import UsageError
from router.policy import POLICY_FILES, PolicySet, predictor_path, read_policy_set
from router.predictor import Predictor

__all__ = ["check_in_policy", "predictor_target"]


def predictor_target(policy: PolicySet) -> tuple[Path, Predictor]:
    """The file the policy reads its predictor from, and that predictor; UsageError when it has none."""
    folder, ref, current = policy.directory, policy.predictor_ref, policy.predictor
    if current is None or ref is None:
        raise UsageError(f"the policy in {folder} has no `defaults.predictor` in routing.yaml: there is no predictor "
                         "to compare with or replace (set it, e.g. `predictor: predictor`, and put a predictor there)")
    if Path(ref).is_absolute():
        raise UsageError(f"the policy in {folder} names its predictor by an absolute path ({ref}); installing "
                         "writes only into the policy's tree: name it relative to the policy directory")
    return predictor_path(folder, ref), current


def check_in_policy(policy: PolicySet, target: Path, artefact: bytes) -> list[str]:
    """The problems the policy would have with `artefact` at `target` (none: the gateway will load it)."""
    folder = policy.directory
    relative = Path(os.path.relpath(os.path.abspath(target), os.path.abspath(folder)))  # as the policy names it
    ups = len([p for p in relative.parts if p == ".."])
    with tempfile.TemporaryDirectory(prefix="gateway-install-") as tmp:
        # Nested deep enough that a target outside the policy directory (`../elsewhere/...`) stays inside tmp.
        copy = Path(tmp).joinpath(*(f"up{i}" for i in range(ups)), "policy")
        copy.mkdir(parents=True)
        for name in POLICY_FILES:
            if (folder / name).exists():
                shutil.copyfile(folder / name, copy / name)
        mirror = Path(os.path.normpath(copy / relative))
        mirror.parent.mkdir(parents=True, exist_ok=True)
        mirror.write_bytes(artefact)
        loaded, problems = read_policy_set(copy)
        if loaded is not None:
            return []
        return [p.replace(str(mirror), str(target)).replace(str(copy), str(folder)) for p in problems]
