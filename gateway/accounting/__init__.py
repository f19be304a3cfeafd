"""Accounting: per-call usage and cost in SQL, and the reports finance reads.

`Accounting` is what the app's lifespan creates and hands to the handlers (through app state): the
database engine, the price catalogue, the recorder, and the request path's bounded reads of the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting import db
from gateway.accounting.prices import DEFAULT_PRICES_FILE, PriceCatalogue, load_prices
from gateway.accounting.reads import BoundedReads, bounded_reads, describe
from gateway.accounting.recorder import Recorder
from gateway.accounting.records import UsageRecord
from gateway.outcome import Outcome
from gateway.settings import Settings

log = logging.getLogger("gateway.accounting")


@dataclass
class Accounting:
    url: str
    engine: AsyncEngine
    catalogue: PriceCatalogue
    recorder: Recorder
    reads: BoundedReads  # key lookups and budget counters' first reads: never a long wait (gateway/accounting/reads.py)


__all__ = ["Accounting", "auto_migrate", "database_url", "start_accounting", "stop_accounting"]


async def start_accounting(settings: Settings,
                           on_record: Callable[[Outcome, UsageRecord], None] | None = None) -> Accounting:
    """Load prices, open the database (migrating the embedded one), start the recorder (`on_record`: what
    it tells of each record it builds from a finished call: gateway/telemetry).

    Raises PricesError or DatabaseError when the gateway must not start (a bad price file, an
    unmigrated database). An unreachable database is not fatal: records are spooled until it answers.
    """
    catalogue = load_prices(settings.prices_file or DEFAULT_PRICES_FILE)
    missing = sorted({p.model for p in settings.pools} - set(catalogue.versions))
    if missing:
        log.warning("accounting: no price for %s in %s; their calls are recorded with cost 0",
                    ", ".join(missing), catalogue.source)
    url = db.async_url(database_url(settings))
    engine = db.create_engine(url)
    reads = bounded_reads(settings, url)
    try:
        await asyncio.wait_for(db.prepare(engine, url, auto_migrate(settings)), 60)
    except db.DatabaseError:
        await engine.dispose()
        await reads.close()
        raise
    except Exception as exc:
        if not db.is_unreachable(exc) and not isinstance(exc, TimeoutError):
            await engine.dispose()
            await reads.close()
            raise
        reads.failed(describe(exc))  # the request path starts on the last known keys
        log.warning("accounting: database %s unreachable at start (%s); records are spooled until it answers",
                    db.safe_url(url), type(exc).__name__)
    recorder = Recorder(
        engine, catalogue, Path(settings.state_dir) / "spool", url=url,
        queue_max=settings.recorder_queue_max, batch_max=settings.recorder_batch_max,
        flush_interval_s=settings.recorder_flush_interval_s, retry_interval_s=settings.recorder_retry_interval_s,
        write_timeout_s=settings.recorder_write_timeout_s, on_record=on_record,
    )
    await recorder.start()
    return Accounting(url, engine, catalogue, recorder, reads)


async def stop_accounting(accounting: Accounting) -> None:
    """Flush the recorder (to the database, else the spool), then close the database."""
    try:
        await accounting.recorder.close()
    finally:
        await accounting.engine.dispose()
        await accounting.reads.close()


def database_url(settings: Settings) -> str:
    return settings.database_url or db.embedded_url(settings.state_dir)


def auto_migrate(settings: Settings) -> bool:
    return settings.auto_migrate if settings.auto_migrate is not None else settings.database_url is None
