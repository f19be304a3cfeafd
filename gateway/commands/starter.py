"""`gateway init DIR`: an editable copy of the shipped policies (DIR/policies) and a commented settings file
(DIR/gateway.yaml) pointing at it, to start a deployment from. Nothing is replaced without `--force`.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

# What the policy directory holds (policies/README.md); the predictor's training data stays in the package.
POLICY_ENTRIES = ("models.yaml", "classify.yaml", "routing.yaml", "prices.yaml", "predictor", "judge", "tests")
CONFIG_FILE = "gateway.yaml"

CONFIG = """\
# Settings for `gateway serve --config {config}` (and `gateway db`, `gateway keys`, ... with --config),
# written by `gateway init`. Every key is optional; GATEWAY_<KEY> environment variables win over this file.
# docs/configuration.md describes every setting. Relative paths are from the working directory.

# host: 127.0.0.1
# port: 8080
# state_dir: .gateway              # the embedded SQLite database, the launched replicas' logs, the dev key

# The routing policy and the price catalogue: copies of the shipped ones, to edit.
# `gateway policies check --config {config}` validates them; `gateway policies test` runs policies/tests.
policies_dir: {policies}
prices_file: {prices}

# Accounting: unset, SQLite at <state_dir>/gateway.db, migrated at start.
# database_url: postgresql://gateway@db-host/gateway
# Keys: `auth: off` serves every call as tenant `default`'s; `gateway keys create` makes keys.
# auth: required
# redis_url: redis://127.0.0.1:6379/0   # cache, rate limits and budgets shared by several gateway processes

# The workers. Unset: two simulated vLLM pools the gateway launches itself (`small` and `large`, serving
# demo-small and demo-large of policies/models.yaml). Real vLLM servers instead (each pool's model a model of
# models.yaml):
# pools:
#   - name: small
#     model: llama-3.1-8b            # the servers' --served-model-name
#     replicas: [http://gpu-node-1:8000, http://gpu-node-2:8000]
#   - name: large
#     model: llama-3.1-70b
#     replicas: [http://gpu-node-3:8000]
"""


def targets(directory: Path) -> list[Path]:
    """The paths `write` creates under `directory`."""
    return [directory / CONFIG_FILE, *(directory / "policies" / name for name in POLICY_ENTRIES)]


def write(directory: Path, shipped: Path, force: bool) -> int:
    """Copy the shipped policies into directory/policies and write directory/gateway.yaml; exit status."""
    existing = [p for p in targets(directory) if p.exists()]
    if existing and not force:
        names = ", ".join(str(p) for p in existing)
        print(f"gateway init: {names} already exist{'s' if len(existing) == 1 else ''}; nothing written "
              "(--force replaces them)", file=sys.stderr)
        return 1
    policies = directory / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    for name in POLICY_ENTRIES:
        source, target = shipped / name, policies / name
        if source.is_dir():
            if target.is_dir():
                shutil.rmtree(target)
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(source, target)
    config = directory / CONFIG_FILE
    absolute = policies.resolve()
    config.write_text(CONFIG.format(config=config, policies=json.dumps(str(absolute)),
                                    prices=json.dumps(str(absolute / "prices.yaml"))))
    print(f"wrote {policies}/ (the shipped policies: {', '.join(POLICY_ENTRIES)}) and {config}")
    print(f"next: edit them; `gateway policies check --config {config}`; `gateway serve --config {config}`")
    return 0
