"""The migration step: create what is missing, add the columns a newer sendq added, (re)install the triggers."""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from worker.store.schema import metadata
from worker.store.triggers import HISTORY_TRIGGERS, install_campaign_counts


def migrate(engine: Engine) -> None:
    """Create missing tables, add columns a newer sendq added to an existing table, and (re)install the triggers."""
    for attempt in range(5):
        try:
            with engine.begin() as conn:
                _migrate(conn)
            return
        except sa.exc.DBAPIError:
            # Processes starting together race to create the same objects; the loser tries again and finds
            # them there.
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


def _migrate(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(7158423)"))  # one schema writer at a time
    metadata.create_all(conn, checkfirst=True)
    inspector = sa.inspect(conn)
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise RuntimeError(f"cannot add required column {table.name}.{column.name} in place")
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
        indexed = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexed:
                index.create(conn)
    for statement in HISTORY_TRIGGERS[conn.dialect.name]:
        conn.execute(sa.text(statement))
    install_campaign_counts(conn)

