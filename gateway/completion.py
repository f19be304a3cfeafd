"""The steps after a call's last byte, in the order `finish` (gateway/outcome.py) runs them:

1. `cache store`: the response cache stores a complete, cacheable answer and releases the single-flight
   lock (scheduled, off the request path);
2. `shadow offer`: a sampled call the predictor routed becomes a shadow job (queued);
3. `feature stash`: a call the predictor routed, answered in full by a worker, leaves its features for
   feedback;
4. `request metrics`: the call's counter and latency histograms;
5. `record`: the recorder journals the call (one `write()`: a `kill -9` cannot lose it) and queues it; usage
   metrics and the access line follow as its record is built;
6. `budget settlement`: the call's rate limit tokens and budget reservation are settled to its recorded
   cost (queued).

The app's lifespan builds them once (a step for each service the app has) and hands them to the request
path; each reads the per-call state the request path left on the `Outcome` (its cache ticket, its
admission, the predictor's view, the shadow's watch), so a call allocates nothing for them.
"""

from __future__ import annotations

from functools import partial

from gateway.accounting.recorder import Recorder
from gateway.cache.service import ResponseCache
from gateway.learning.shadow.service import Shadow
from gateway.learning.stash import FeatureStash, keep_features
from gateway.limits.service import Limits
from gateway.outcome import Step
from gateway.telemetry.metrics import RequestMetrics


def completion_steps(metrics: RequestMetrics, recorder: Recorder, cache: ResponseCache | None = None,
                     limits: Limits | None = None, stash: FeatureStash | None = None,
                     shadow: Shadow | None = None) -> tuple[Step, ...]:
    steps: list[Step] = []
    if cache is not None:
        steps.append(Step("cache store", cache.store))
    if shadow is not None:
        steps.append(Step("shadow offer", shadow.offer))
    if stash is not None:
        steps.append(Step("feature stash", partial(keep_features, stash)))
    steps.append(Step("request metrics", metrics.observe))
    steps.append(Step("record", recorder.record))
    if limits is not None:
        steps.append(Step("budget settlement", limits.settle))
    return tuple(steps)
