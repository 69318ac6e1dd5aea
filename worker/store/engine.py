"""Connections to the store (SQLite by default, PostgreSQL through psycopg 3 in production), and the statement
helpers that differ between the two."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, ExceptionContext, RowMapping

from worker.errors import StoreUnavailable

if TYPE_CHECKING:
    from sqlalchemy.dialects.postgresql import Insert as PostgresInsert
    from sqlalchemy.dialects.sqlite import Insert as SqliteInsert

#: A row read by column name: a dict sendq built, or a RowMapping from SQLAlchemy (whose keys may also be
#: Column objects, so it is no Mapping[str, Any]).
NamedRow = Mapping[str, Any] | RowMapping

#: A pooled connection idle longer than this is pinged before use; a busy one is not. A pre-ping on every
#: checkout would add a round trip to each of the send path's two statements; after a database restart an idle
#: process's first call would fail without one. (HikariCP skips validation the same way, within 500 ms of use.)
IDLE_PING_S = 1.0
#: SQLSTATEs of a server that is going away or not up yet: class 08 (connection exception), 57P01-57P03.
_UNAVAILABLE_STATES = ("08", "57P01", "57P02", "57P03")


def create_engine(url: str, **options: Any) -> Engine:
    """An engine for ``url``; ``postgresql://`` URLs are routed to psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix):]
    # Statement parameters hold recipients and message texts: an error must not carry them into a log line.
    options.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **options)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = sa.create_engine(url, pool_size=10, max_overflow=20, pool_recycle=1800,
                                  connect_args={"connect_timeout": 5}, **options)
        _ping_when_idle(engine)
    sa.event.listen(engine, "handle_error", _translate_unavailable)
    return engine


def _translate_unavailable(context: ExceptionContext) -> BaseException | None:
    """The one place a lost or refused database connection becomes :class:`StoreUnavailable`, so callers tell
    "the store is down" (wait, spend no retry) from a failing statement without knowing the driver."""
    error = context.original_exception
    state = getattr(error, "sqlstate", None) or ""
    connecting = context.connection is None
    if context.is_disconnect or state.startswith(_UNAVAILABLE_STATES) or (
            connecting and isinstance(error, context.dialect.loaded_dbapi.OperationalError)):
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return StoreUnavailable(first_line)
    return None


def _ping_when_idle(engine: Engine) -> None:
    dialect = engine.dialect

    @sa.event.listens_for(engine, "connect")
    def _born(_dbapi_connection: Any, record: Any) -> None:
        record.info["used"] = time.monotonic()

    @sa.event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info["used"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _check(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("used", 0.0) <= IDLE_PING_S:
            return
        try:
            alive = dialect.do_ping(dbapi_connection)
        except Exception:
            alive = False
        if not alive:
            # The pool drops this connection and checks out (or opens) another.
            raise sa.exc.DisconnectionError("idle connection did not answer a ping")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; busy_timeout makes writers queue instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


@functools.lru_cache(maxsize=32)
def dialect_insert(dialect: str, table: sa.Table) -> PostgresInsert | SqliteInsert:
    """An INSERT with the dialect's own ``on_conflict_*`` clauses: PostgreSQL's, else SQLite's."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgres_insert

        return postgres_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def insert_ignoring(dialect: str, table: sa.Table) -> Any:
    """INSERT that skips rows whose key is already there, returning the key of each row it wrote.

    Inside a larger transaction a duplicate must not raise: on PostgreSQL the error would abort the whole
    transaction. The key comes back because psycopg gives no rowcount for INSERT ... ON CONFLICT.
    """
    return dialect_insert(dialect, table).on_conflict_do_nothing().returning(*table.primary_key.columns)


def insert_new(conn: Connection, table: sa.Table, row: Mapping[str, Any]) -> bool:
    """Insert ``row`` unless its key is there already; whether it was written."""
    return conn.execute(insert_ignoring(conn.dialect.name, table), dict(row)).first() is not None


def lock_names(conn: Connection, names: Iterable[str]) -> None:
    """Serialize transactions on ``names`` until commit (PostgreSQL advisory locks, taken in sorted order so
    two holders of several never deadlock). SQLite's single writer serializes already."""
    wanted = sorted(set(names))
    if wanted and conn.dialect.name == "postgresql":
        conn.execute(_ADVISORY_LOCKS, {"names": wanted})


# One statement for any number of names; unnest keeps the array's (sorted) order.
_ADVISORY_LOCKS = sa.text("SELECT pg_advisory_xact_lock(hashtextextended(name, 0)) "
                          "FROM unnest(CAST(:names AS text[])) AS name")


