"""Connections to the store (SQLite by default, PostgreSQL through psycopg 3 in production), and the statement
helpers that differ between the two."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine


def create_engine(url: str, **options: Any) -> Engine:
    """An engine for ``url``; ``postgresql://`` URLs are routed to psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix):]
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **options)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # No pre-ping: it would cost a round trip per transaction; a connection lost to a database restart fails
    # the job, which is retried.
    return sa.create_engine(url, pool_size=10, max_overflow=20, pool_recycle=1800, **options)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; busy_timeout makes writers queue instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


@functools.lru_cache(maxsize=32)
def insert_ignoring(dialect: str, table: sa.Table) -> Any:
    """INSERT that skips rows whose key is already there, returning the key of each row it wrote.

    Inside a larger transaction a duplicate must not raise: on PostgreSQL the error would abort the whole
    transaction. The key comes back because psycopg gives no rowcount for INSERT ... ON CONFLICT.
    """
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing().returning(*table.primary_key.columns)


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


