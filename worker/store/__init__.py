"""The outcome store: the system of record for every message (SQLAlchemy Core).

SQLite by default, PostgreSQL through psycopg 3 in production. A message row is written before its job is
enqueued (a transactional outbox): a job lost in Redis is found again from here, and a duplicate job finds the
row already claimed. The parts, a file each: :mod:`~worker.store.schema` (tables), :mod:`~worker.store.triggers`
(a message's history and its campaign's counts, kept by the database), :mod:`~worker.store.migration`
(:func:`migrate`), :mod:`~worker.store.engine` (connections), :mod:`~worker.store.messages` (a message's statuses) and
:mod:`~worker.store.events` (Telnyx events). Campaigns, suppressions, inbound messages and bulk updates keep
their repositories beside their logic (:mod:`worker.campaigns`, :mod:`worker.suppressions`, ...), on the
tables defined here.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from worker.store.engine import NamedRow, create_engine, insert_ignoring, insert_new, lock_names
from worker.store.events import EventRecords, FoldedMessage
from worker.store.messages import CONDITIONS, ENQUEUE_PENDING, MessageRecords, NewMessage
from worker.store.migration import migrate
from worker.store.schema import (
    bulk_updates,
    campaign_counts,
    campaign_recipients,
    campaigns,
    events,
    history,
    inbound_messages,
    link_clicks,
    messages,
    metadata,
    new_id,
    suppressions,
    sync_state,
    utcnow,
)
from worker.store.triggers import COUNTS_BACKFILLED

__all__ = [
    "CONDITIONS", "COUNTS_BACKFILLED", "ENQUEUE_PENDING", "FoldedMessage", "NamedRow", "NewMessage", "Store",
    "bulk_updates", "campaign_counts",
    "campaign_recipients", "campaigns", "create_engine", "events", "history", "inbound_messages", "insert_ignoring",
    "insert_new", "link_clicks", "lock_names", "messages", "metadata", "new_id", "suppressions", "sync_state",
    "utcnow",
]


class Store(MessageRecords, EventRecords):
    """Messages, their history and Telnyx events in one SQL database: two connection pools on it, and the
    methods of each part of the schema."""

    def __init__(self, engine: Engine, reader: Engine | None = None) -> None:
        self.engine = engine
        #: Single-statement reads and changes go through an autocommit pool: no BEGIN and COMMIT round trips.
        self.reader = reader or engine

    @classmethod
    def from_url(cls, url: str) -> Store:
        """A store on ``url``; nothing is read or written until it is used. The schema is not touched: each
        process brings it up to date once at start (:meth:`migrate`, also ``sendq migrate``)."""
        return cls(create_engine(url), create_engine(url, isolation_level="AUTOCOMMIT"))

    def migrate(self) -> Store:
        """Bring the schema up to date (:func:`worker.store.migration.migrate`); returns the store."""
        migrate(self.engine)
        return self

    def ping(self) -> None:
        with self.reader.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()
        self.reader.dispose()
