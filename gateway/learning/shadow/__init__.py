"""Shadow evaluation of routed calls (docs/learned-routing.md).

- `service.py`: `Shadow` (sampling on the request path, the job offered after the call, the jobs) and
  `start_shadow`, which builds it for the app's lifespan;
- `answers.py`: the texts a job reads, and `Watch`, a sampled call's request and answer;
- `calls.py`: one call of a job (the reference model, the judge), recorded in accounting;
- `judge.py`: the exact judge, and the grading prompt and verdicts of a judge model;
- `spend.py`: today's shadow spend, against the daily budget.

Kept free of imports here: the call's `Outcome` holds a `Watch`, and importing `answers.py` must not load
the service (which reads outcomes).
"""
