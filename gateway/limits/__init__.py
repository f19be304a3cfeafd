"""Rate limits and budgets: how much a key and its team may call and spend.

- `periods.py`: budget periods (day, month, total) in UTC;
- `backend.py`: the checks and their outcomes, and the in-process backend (one gateway process);
- `redis_backend.py` + `limits.lua`: the same in Redis, for several gateway processes (one round trip
  per request: a Lua script checks and takes every applicable limit atomically);
- `service.py`: `Limits`, what the request path calls (admit before the call, settle after it), the
  x-ratelimit-* headers, 429s, soft-threshold warnings;
- `budgets.py`: budgets and their spend, for reports.

Money in the counters is an integer count of 10^-10 units of the price catalogue's currency, the
accounting's own precision, so settling a recorded cost is exact.
"""
