"""`POST /v1/feedback`: a client scores a call the quality predictor routed; the score is stored with the
call's features (never its text) in `routing_outcomes`.

Body: `{"request_id": "...", "score": 0.0-1.0}` or `{"request_id": "...", "label": "good" | "bad"}`
(good = 1, bad = 0; with both, the score counts and the label is kept), and optionally `"model"`, which
must be the model that answered. The call is looked up in the feature stash under the caller's tenant, so
a key can only rate its own tenant's calls: another tenant's request id is simply not found.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.auth.principal import Principal
from gateway.inference.openai_request import read_object
from gateway.learning.stash import FeatureStash, StashEntry
from gateway.learning.store import OutcomeRow, upsert_outcome
from router.errors import FeedbackUnavailable, InvalidRequest, RequestNotFound

log = logging.getLogger("gateway.learning")

LABELS = {"good": 1.0, "bad": 0.0}
FIELDS = ("request_id", "score", "label", "model")
MAX_REQUEST_ID = 128
WRITE_TIMEOUT_S = 10.0


class Feedback(msgspec.Struct, frozen=True):
    request_id: str
    score: float
    label: str | None
    model: str | None


def parse_feedback(body: bytes) -> Feedback:
    """The request body, checked; InvalidRequest naming the field otherwise."""
    data = read_object(body)
    for name in data:
        if name not in FIELDS:
            raise InvalidRequest(f"Unknown field `{name}`; feedback takes {', '.join(FIELDS)}.", param=name,
                                 code="unknown_parameter")
    rid = data.get("request_id")
    if rid is None:
        raise InvalidRequest("`request_id` is required: the x-request-id of the call being rated.",
                             param="request_id", code="missing_required_parameter")
    if not isinstance(rid, str) or not 1 <= len(rid) <= MAX_REQUEST_ID:
        raise InvalidRequest(f"`request_id` must be a string of 1-{MAX_REQUEST_ID} characters.",
                             param="request_id", code="invalid_value")
    label = data.get("label")
    if label is not None and (not isinstance(label, str) or label not in LABELS):
        raise InvalidRequest(f"`label` must be one of {', '.join(LABELS)}.", param="label", code="invalid_value")
    score = data.get("score")
    if score is None:
        if label is None:
            raise InvalidRequest("Give a `score` (0 to 1) or a `label` (good or bad).", param="score",
                                 code="missing_required_parameter")
        score = LABELS[label]
    elif isinstance(score, bool) or not isinstance(score, int | float) or not 0.0 <= score <= 1.0:
        raise InvalidRequest("`score` must be a number from 0 to 1.", param="score", code="invalid_value")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest("`model` must be a string.", param="model", code="invalid_type")
    return Feedback(rid, float(score), label, model)


async def submit_feedback(stash: FeatureStash | None, engine: AsyncEngine, principal: Principal,
                          body: bytes) -> dict[str, Any]:
    """Store the feedback (replacing an earlier one for the same call and model); the answer's body."""
    fb = parse_feedback(body)
    if stash is None:
        raise RequestNotFound("Feedback is off on this gateway (feedback_window_s is 0).", param="request_id")
    entry = await _look_up(stash, principal.tenant, fb.request_id)
    if entry is None:
        raise RequestNotFound(
            f"No call with the id `{fb.request_id}` routed by the quality predictor for this tenant within the "
            f"feedback window of {stash.window_s} s.", param="request_id")
    if fb.model is not None and fb.model != entry.model:
        raise InvalidRequest(f"Feedback on this call is about the model that answered it, `{entry.model}`, "
                             f"not `{fb.model}`.", param="model", code="invalid_value")
    row = OutcomeRow(
        request_id=entry.record_id, tenant=entry.tenant, team=entry.team, key_id=entry.key_id, model=entry.model,
        score=fb.score, label=fb.label, source="feedback", judge=None, feature_layout=entry.layout,
        features=entry.features, predictor=entry.predictor,
    )
    try:
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await upsert_outcome(engine, row)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        log.warning("request %s: feedback not stored: %s", fb.request_id, type(exc).__name__)
        raise FeedbackUnavailable("The feedback could not be stored: the database is unavailable. Retry later.",
                                  headers={"retry-after": "5"}) from None
    log.info("request %s: feedback %.3f on %s stored by key %s", fb.request_id, fb.score, entry.model,
             principal.key_id)
    return {"request_id": fb.request_id, "model": entry.model, "score": fb.score, "source": "feedback"}


async def _look_up(stash: FeatureStash, tenant: str, request_id: str) -> StashEntry | None:
    try:
        return await stash.get(tenant, request_id)
    except Exception as exc:  # Redis unreachable or timing out
        log.warning("request %s: the feedback stash cannot be read: %s", request_id, type(exc).__name__)
        raise FeedbackUnavailable("The feedback could not be checked: the feature stash is unavailable. "
                                  "Retry later.", headers={"retry-after": "1"}) from None
