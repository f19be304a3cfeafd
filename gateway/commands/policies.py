"""`gateway policies check|test`: validate the routing policy files, run their example requests."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("policies", help="validate routing policies and run their tests")
    cmds = p.add_subparsers(dest="policies_command", required=True)
    check = cmds.add_parser("check", help="validate the policy files; errors as file:line: message")
    test = cmds.add_parser("test", help="run the example requests in <policies>/tests/*.yaml")
    for c in (check, test):
        c.add_argument("--policies", metavar="DIR", type=Path, help="policy directory (default: the shipped policies/)")
    test.add_argument("-v", "--verbose", action="store_true", help="print the trace of passing cases too")
    check.add_argument("--config", help="gateway settings file whose pools the catalogue should name "
                       "(default: $GATEWAY_CONFIG, else the embedded defaults)")
    check.set_defaults(run=run_check)
    test.set_defaults(run=run_test)


def _load(directory: Path | None) -> tuple[Any, list[Any], list[str]]:
    from router.policy import default_policy_dir, read_policy_set
    from router.policytests import read_policy_tests, tests_dir

    folder = directory or default_policy_dir()
    policy, problems = read_policy_set(folder)
    cases, test_problems = read_policy_tests(policy, tests_dir(folder))
    return policy, cases, [*problems, *test_problems]


def run_check(args: argparse.Namespace) -> int:
    policy, cases, problems = _load(args.policies)
    if problems or policy is None:
        for line in problems:
            print(line)
        count = len(problems)
        print(f"{count} error{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
    from gateway.settings import SettingsError, load_settings

    try:
        pools = [p.name for p in load_settings(args.config).pools]
    except SettingsError as exc:
        print(f"warning: pools not checked: {exc}", file=sys.stderr)
    else:
        for line in policy.check_pools(pools):
            print(f"warning: {line}", file=sys.stderr)
    print(
        f"policies OK: {len(policy.models)} models, {len(policy.aliases)} aliases, {len(policy.rules)} rules, "
        f"{len(cases)} tests in {policy.directory} (sha256 {policy.hash[:12]})"
    )
    return 0


def run_test(args: argparse.Namespace) -> int:
    from router.explain import trace_lines
    from router.policytests import run_policy_tests

    policy, cases, problems = _load(args.policies)
    if problems or policy is None:
        for line in problems:
            print(line)
        print("the policy has errors; run `gateway policies check`", file=sys.stderr)
        return 1
    results = run_policy_tests(policy, cases)
    failed = 0
    for r in results:
        if r.ok:
            outcome = (f"{r.decision.model} by `{r.decision.rule}`" if r.decision is not None
                       else f"error {r.error.status if r.error else '?'}")
            print(f"PASS {r.case.name}  ->  {outcome}")
            if not args.verbose:
                continue
        else:
            failed += 1
            print(f"FAIL {r.case.name}  ({r.case.where})")
            for line in r.diffs:
                print(f"    {line}")
        trace = r.decision.trace if r.decision is not None else getattr(r.error, "trace", ())
        f = r.features
        print(f"    features: {f.category}, tier {f.tier}, ~{f.prompt_tokens} prompt tokens, "
              f"needs: {', '.join(sorted(f.capabilities)) or 'nothing special'}")
        print("    trace:")
        for line in trace_lines(trace, indent="      "):
            print(line)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0
