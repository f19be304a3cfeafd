"""Pieces of the gateway overhead benchmark (`bench/overhead.py`).

procs    child processes (own session, own temp dir), CPU pinning, /proc readers, free ports
mock     the nginx mock upstream: fixed vLLM-shaped bodies, /health, /metrics
wrk      the load generator (wrk + load.lua) and its parsed result
servers  the gateway and LiteLLM, configured as in production, started and checked
profile  py-spy on the gateway: flamegraph SVG and top functions by self time
report   figures, targets (PASS/FAIL), the Markdown summary
"""
