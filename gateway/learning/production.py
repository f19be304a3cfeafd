"""Production outcomes as training rows: `routing_outcomes` read back from the gateway's database.

One training row per request: the score of each model scored on it (the mean when client feedback and
a shadow judge both scored it) and the feature vector stored with the scores (every score of a request
carries the same one; the earliest row's is taken). Only rows in this gateway's feature layout
(`router.features.FEATURES`) are used; the others are counted and reported, never mixed in. No text is
read: there is none in the table.

Requests are held out by a hash of (seed, request id), as file rows are by their text, so the same seed
and share always hold out the same requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, inspect, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.accounting import db
from gateway.durations import parse_duration
from gateway.learning.build import Examples, head_targets
from gateway.learning.dataset import UsageError
from gateway.learning.outcomes import in_share
from gateway.learning.store import OUTCOMES
from router import features

__all__ = ["MIN_SCORED", "Production", "check_enough", "examples", "parse_since", "public_url", "read_production",
           "request_in_holdout"]

# A head taught by fewer scored rows than this is noise, not a predictor worth installing.
MIN_SCORED = 20
FETCH_ROWS = 2000  # rows fetched per round trip while streaming the table


@dataclass(frozen=True, eq=False)
class Production:
    request_ids: list[str]  # sorted: the row order does not depend on the database's
    vectors: npt.NDArray[np.float32]  # (requests, SIZE)
    outcomes: list[dict[str, float]]  # per request: model -> score
    rows: int  # outcome rows used
    skipped: dict[str, int] = field(default_factory=dict)  # another feature layout -> its rows
    unreadable: int = 0  # rows of this layout whose vector does not decode (their requests are left out)


def parse_since(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `2w` -> the window; UsageError otherwise."""
    window = parse_duration(text)
    if window is None or window <= timedelta(0):
        raise UsageError(f"--since {text!r}: give a positive number of minutes, hours, days or weeks "
                         "(90m, 12h, 30d, 2w)")
    return window


def public_url(url: str) -> str:
    """The database's URL without credentials (user, password, query parameters), for provenance and
    messages: `postgresql://host:5432/name`, `sqlite:////path/gateway.db`."""
    u = make_url(url)
    bare = URL.create(u.get_backend_name(), host=u.host, port=u.port, database=u.database)
    return bare.render_as_string(hide_password=False)


def request_in_holdout(request_id: str, holdout: float, seed: int) -> bool:
    """Whether a request belongs to the held-out share (stable for a seed)."""
    return in_share(f"request\0{request_id}", holdout, seed)


def examples(production: Production, holdout: float, seed: int) -> Examples:
    held = np.array([request_in_holdout(r, holdout, seed) for r in production.request_ids], dtype=np.bool_)
    outcomes: list[Mapping[str, float]] = list(production.outcomes)
    return Examples(production.vectors, outcomes, held)


def check_enough(rows: Examples, heads: Mapping[str, Sequence[str]]) -> None:
    """UsageError naming each head scored on fewer than MIN_SCORED rows (held-out ones included)."""
    lines = [f"model `{head}` is scored on {int((~np.isnan(column)).sum())} row(s); training from production "
             f"needs at least {MIN_SCORED} per model: collect more feedback, widen --since, or add --data"
             for head, column in head_targets(rows.outcomes, heads).items() if (~np.isnan(column)).sum() < MIN_SCORED]
    if lines:
        raise UsageError(*lines)


def read_production(url: str, since: timedelta | None, now: datetime | None = None) -> Production:
    """The outcomes scored since `now - since` (all with None); UsageError, one line, when the database
    cannot be read (unreachable, not migrated, no file)."""
    where = public_url(url)
    if db.is_sqlite(url):
        path = make_url(url).database
        if path and path != ":memory:" and not Path(path).exists():
            raise UsageError(f"no gateway database at {path} (start the gateway with `gateway serve`, or run "
                             "`gateway db upgrade`)")
    cutoff = None if since is None else (now or datetime.now(UTC)) - since
    try:
        return asyncio.run(_read(url, cutoff))
    except UsageError:
        raise
    except Exception as error:
        if db.is_unreachable(error):
            raise UsageError(f"cannot reach the database {where}: {_first_line(error)}") from None
        if isinstance(error, SQLAlchemyError | db.DatabaseError):
            raise UsageError(f"cannot read routing_outcomes from {where}: {_first_line(error)}") from None
        raise


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip() or type(error).__name__
    return text.splitlines()[0]


async def _read(url: str, cutoff: datetime | None) -> Production:
    engine = db.create_engine(url)
    try:
        async with engine.connect() as conn:
            if not await conn.run_sync(lambda c: inspect(c).has_table(OUTCOMES.name)):
                raise UsageError(f"the database {public_url(url)} has no routing_outcomes table: it is not migrated; "
                                 "run `gateway db upgrade`")
            return await _rows(conn, cutoff)
    finally:
        await engine.dispose()


async def _rows(conn: AsyncConnection, cutoff: datetime | None) -> Production:
    t = OUTCOMES.c
    window = [t.created_at >= cutoff] if cutoff is not None else []
    others = await conn.execute(select(t.feature_layout, func.count()).where(t.feature_layout != features.FEATURES,
                                                                             *window).group_by(t.feature_layout))
    skipped = {str(layout): int(n) for layout, n in others.all()}
    query = (select(t.request_id, t.model, t.score, t.features)
             .where(t.feature_layout == features.FEATURES, *window).order_by(t.id)
             .execution_options(yield_per=FETCH_ROWS))
    blobs: dict[str, bytes] = {}
    scores: dict[str, dict[str, list[float]]] = {}
    rows = 0
    result = await conn.stream(query)
    async for request_id, model, score, blob in result:
        rows += 1
        blobs.setdefault(request_id, blob)  # the earliest row's: they are all the same vector
        scores.setdefault(request_id, {}).setdefault(model, []).append(float(score))
    ids: list[str] = []
    vectors = []
    unreadable = 0
    for request_id in sorted(blobs):
        try:
            vectors.append(features.decode_vector(blobs[request_id]))
        except ValueError:
            unreadable += sum(len(s) for s in scores[request_id].values())
            continue
        ids.append(request_id)
    outcomes = [{m: sum(s) / len(s) for m, s in sorted(scores[r].items())} for r in ids]
    return Production(ids, features.stack(vectors), outcomes, rows - unreadable, skipped, unreadable)
