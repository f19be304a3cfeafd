"""`gateway policies check|test`: validate the routing policy files, run their example requests."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.commands import config
from gateway.settings import Settings


def register(sub: Any) -> None:
    p = sub.add_parser("policies", help="validate routing policies and run their tests")
    cmds = p.add_subparsers(dest="policies_command", required=True, help="what to do")
    check = cmds.add_parser("check", help="validate the policy files; errors as file:line: message")
    test = cmds.add_parser("test", help="run the example requests in <policies>/tests/*.yaml")
    for c in (check, test):
        config.add_policies(c)
    config.add_config(check, "its pools are the ones the catalogue should name")
    config.add_config(test)
    test.add_argument("-v", "--verbose", action="store_true", help="print the trace of passing cases too")
    check.set_defaults(run=run_check)
    test.set_defaults(run=run_test)


def _load(args: argparse.Namespace, settings: Settings) -> tuple[Any, list[Any], list[str]]:
    from router.policy import read_policy_set
    from router.policytests import read_policy_tests, tests_dir

    folder = config.policy_dir(args, settings)
    policy, problems = read_policy_set(folder)
    cases, test_problems = read_policy_tests(policy, tests_dir(folder))
    return policy, cases, [*problems, *test_problems]


def run_check(args: argparse.Namespace) -> int:
    settings = config.settings_or_none(args, f"gateway policies {args.policies_command}")
    if settings is None:
        return 2
    policy, cases, problems = _load(args, settings)
    if problems or policy is None:
        for line in problems:
            print(line)
        count = len(problems)
        print(f"{count} error{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
    for line in policy.check_pools([p.name for p in settings.pools]):
        print(f"warning: {line}", file=sys.stderr)
    for pool in settings.pools:
        if pool.model not in policy.models:
            print(f"warning: pool `{pool.name}` serves `{pool.model}`, which {policy.directory / 'models.yaml'} does "
                  "not list: `gateway serve` derives its entry from the workers' /v1/models "
                  "(`gateway init --from-pools` writes entries)", file=sys.stderr)
    print(
        f"policies OK: {len(policy.models)} models, {len(policy.aliases)} aliases, {len(policy.rules)} rules, "
        f"{len(cases)} tests in {policy.directory} (sha256 {policy.hash[:12]})"
    )
    print(f"rules, in order: {', '.join(rule.name for rule in policy.rules)}")
    return 0


def run_test(args: argparse.Namespace) -> int:
    from router.explain import trace_lines
    from router.policytests import run_policy_tests

    settings = config.settings_or_none(args, f"gateway policies {args.policies_command}")
    if settings is None:
        return 2
    policy, cases, problems = _load(args, settings)
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
