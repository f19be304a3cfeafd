"""The accounting database: engines for PostgreSQL (asyncpg) and SQLite (aiosqlite), and migrations.

Alembic's configuration is built here, in code, with `script_location` resolved relative to the
package, so `gateway db ...` and the gateway's start-up check work from any working directory.

Alembic itself (and Mako, which it imports: ~10 MB of modules) is imported only to migrate: checking
that a database is at this code's head, which every start and every reconnection of the recorder
does, reads the `alembic_version` table and the `revision` / `down_revision` lines of
migrations/versions/ directly.
"""

from __future__ import annotations

import ast
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, exc, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from router.shipped import migrations_dir

if TYPE_CHECKING:  # alembic loads only when migrations run: not on every start of a migrated database
    from alembic.config import Config

log = logging.getLogger("gateway.accounting")

MIGRATIONS_DIR = migrations_dir()
# Serialises migrations of one PostgreSQL database between gateway processes starting together.
_PG_MIGRATION_LOCK = 0x6761_7465_7761_79  # "gateway"


class DatabaseError(Exception):
    """The accounting database cannot be used as it is; the message says what to do.

    `problem` and `hint` are the message's two parts (`problem: hint`), for a caller that prints them apart.
    """

    def __init__(self, problem: str, hint: str = "") -> None:
        super().__init__(f"{problem}: {hint}" if hint else problem)
        self.problem = problem
        self.hint = hint


def embedded_url(state_dir: str | Path) -> str:
    return f"sqlite+aiosqlite:///{(Path(state_dir) / 'gateway.db').resolve()}"


def async_url(url: str) -> str:
    """`postgresql://` and `sqlite:///` mean their async drivers; explicit drivers are kept."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg"):
        u = u.set(drivername="postgresql+asyncpg")
    elif u.drivername in ("sqlite", "sqlite+pysqlite"):
        u = u.set(drivername="sqlite+aiosqlite")
    if u.drivername not in ("postgresql+asyncpg", "sqlite+aiosqlite"):
        raise DatabaseError(f"database_url: unsupported database `{u.drivername}` (use postgresql:// or sqlite:///)")
    return u.render_as_string(hide_password=False)


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def missing_sqlite(url: str) -> str | None:
    """The file of a SQLite `url` when it does not exist yet (a command that reads it has nothing to read)."""
    path = make_url(url).database if is_sqlite(url) else None
    return path if path and path != ":memory:" and not Path(path).exists() else None


def create_engine(url: str, connect_timeout_s: float = 5.0, command_timeout_s: float = 60.0,
                  pool_timeout_s: float = 30.0, **kwargs: Any) -> AsyncEngine:
    """An engine for `url`. PostgreSQL: `connect_timeout_s` bounds opening a connection,
    `command_timeout_s` each statement (asyncpg then cancels it), `pool_timeout_s` the wait for a free
    pooled connection (reads on the request path: gateway/accounting/reads.py)."""
    url = async_url(url)
    if is_sqlite(url):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers (reports) never block the writer
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_async_engine(
        url,
        pool_pre_ping=True,  # a connection that died with the database is replaced, not used
        pool_size=kwargs.pop("pool_size", 4),
        max_overflow=kwargs.pop("max_overflow", 4),
        pool_timeout=pool_timeout_s,
        connect_args={"timeout": connect_timeout_s, "command_timeout": command_timeout_s},
        **kwargs,
    )


def is_unreachable(error: BaseException) -> bool:
    """Whether `error` means the database cannot be reached now (as opposed to a bad statement)."""
    if isinstance(error, OSError | TimeoutError | ConnectionError):
        return True
    if isinstance(error, exc.DBAPIError):
        if error.connection_invalidated:
            return True
        orig = error.orig
        if isinstance(orig, OSError | TimeoutError | ConnectionError):
            return True
        if isinstance(error, exc.OperationalError | exc.InterfaceError):
            # SQLite: locked/busy or a missing file are conditions that pass; PostgreSQL: the server went away.
            return True
        name = type(orig).__name__ if orig is not None else ""
        return name in ("ConnectionDoesNotExistError", "InterfaceError", "CannotConnectNowError",
                        "ConnectionFailureError", "AdminShutdownError", "TooManyConnectionsError")
    if isinstance(error, exc.TimeoutError):
        return True
    sqlite3 = sys.modules.get("sqlite3")  # imported by SQLAlchemy for a SQLite database only
    if sqlite3 is not None and isinstance(error, sqlite3.OperationalError):
        return True
    return type(error).__module__.startswith("asyncpg") and "Connection" in type(error).__name__


# --- migrations ----------------------------------------------------------------------------------


VERSION_TABLE = "alembic_version"  # Alembic's default: where a database's revision is kept


def alembic_config(url: str | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", async_url(url).replace("%", "%%"))
    return cfg


def _assigned(tree: ast.Module, name: str) -> Any:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            return ast.literal_eval(node.value) if node.value is not None else None
    raise ValueError(f"no `{name} = ...`")


def revisions() -> tuple[set[str], set[str]]:
    """(every revision in migrations/versions/, the heads): from each script's `revision` and
    `down_revision` assignments, without importing the scripts (nor Alembic)."""
    known: set[str] = set()
    parents: set[str] = set()
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        try:
            revision, down = _assigned(tree, "revision"), _assigned(tree, "down_revision")
        except ValueError as error:
            raise DatabaseError(f"migration script {path}: {error}") from None
        known.add(revision)
        parents.update((down,) if isinstance(down, str) else down or ())
    return known, known - parents


def head_revision() -> str:
    heads = revisions()[1]
    if len(heads) != 1:
        raise DatabaseError(f"the migration scripts in {MIGRATIONS_DIR} have {len(heads)} heads, not one")
    return next(iter(heads))


def _current(conn: Connection) -> str | None:
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    found = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(found) > 1:
        raise DatabaseError(f"the accounting database has {len(found)} revisions in {VERSION_TABLE}, not one")
    return found[0] if found else None


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def _run(engine: AsyncEngine, fn: Callable[[Config], None]) -> None:
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            await conn.commit()
        try:
            await conn.run_sync(_with_connection, fn)
            await conn.commit()
        finally:
            if conn.dialect.name == "postgresql":
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                await conn.commit()


def _with_connection(conn: Connection, fn: Callable[[Config], None]) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    fn(cfg)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    from alembic import command

    await _run(engine, lambda cfg: command.upgrade(cfg, revision))


async def downgrade(engine: AsyncEngine, revision: str = "-1") -> None:
    from alembic import command

    await _run(engine, lambda cfg: command.downgrade(cfg, revision))


MIGRATE_HINT = "run `gateway db upgrade`"


async def check_migrated(engine: AsyncEngine, url: str) -> None:
    """Raise DatabaseError unless the database is at this code's head revision."""
    current = await current_revision(engine)
    head = head_revision()
    if current == head:
        return
    where = safe_url(url)
    if current is None:
        raise DatabaseError(f"the accounting database {where} is not migrated", MIGRATE_HINT)
    if current not in revisions()[0]:
        raise DatabaseError(f"the accounting database {where} is at revision {current}, which this gateway does not "
                            "know", "migrated by a newer version? run that version")
    raise DatabaseError(f"the accounting database {where} is at revision {current}, not {head}", MIGRATE_HINT)


async def prepare(engine: AsyncEngine, url: str, auto_migrate: bool) -> None:
    """Migrate (when allowed) or check the database; DatabaseError when it cannot be used."""
    if auto_migrate:
        before = await current_revision(engine)
        if before != head_revision():
            await upgrade(engine)
            log.info("migrated the accounting database %s from %s to %s", safe_url(url), before, head_revision())
    await check_migrated(engine, url)


async def ping(conn: AsyncConnection) -> None:
    await conn.execute(text("SELECT 1"))


async def run_command(prog: str, url: str, work: Callable[[AsyncEngine], Awaitable[int]]) -> int:
    """A CLI command's work on the database at `url`: exit status 1 with one line when it cannot be
    reached, the engine disposed however it ends."""
    import sys

    engine = create_engine(url)
    try:
        return await work(engine)
    except Exception as error:
        if is_unreachable(error):
            print(f"{prog}: cannot reach {safe_url(url)}: {error}", file=sys.stderr)
            return 1
        raise
    finally:
        await engine.dispose()
