"""Telnyx events in the store: the durable dedupe by event id, the parking place of events that arrive before
the send recorded the telnyx id they refer to, and the statements a batch of events is applied with (on the
caller's transaction; see :mod:`worker.events`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from worker.store.engine import insert_ignoring
from worker.store.schema import events, messages, utcnow

_PENDING_EVENTS = (sa.select(events.c.event_id, events.c.body)
                   .where(events.c.telnyx_id == sa.bindparam("telnyx_id"), events.c.applied_at.is_(None))
                   .order_by(events.c.occurred_at))


class EventRecords:
    """The event methods of :class:`worker.store.Store`."""

    engine: Engine
    reader: Engine

    def record_event(self, event_id: str, event_type: str, telnyx_id: str | None,
                     occurred_at: datetime | None, body: Mapping[str, Any]) -> bool:
        """Keep a verified event; False when its id is already known (a redelivery)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(events.insert().values(
                    event_id=event_id, event_type=event_type, telnyx_id=telnyx_id,
                    occurred_at=occurred_at, body=dict(body), received_at=utcnow(),
                ))
        except sa.exc.IntegrityError:
            return False
        return True

    def pending_events(self, telnyx_id: str) -> Iterator[dict[str, Any]]:
        """Events for ``telnyx_id`` not applied yet, oldest first."""
        with self.reader.connect() as conn:
            rows = [dict(r) for r in conn.execute(_PENDING_EVENTS, {"telnyx_id": telnyx_id}).mappings()]
        yield from rows

    # -- event batches (worker.events.apply_events): statements on the caller's transaction ------------

    @staticmethod
    def begin_batch(conn: Connection) -> None:
        """Take SQLite's write lock now, for a batch whose first statement is a read.

        pysqlite begins a transaction only before a write, so a read-then-write batch would read outside it.
        PostgreSQL needs nothing: the batch's rows are locked by :meth:`lock_messages`.
        """
        if conn.dialect.name == "sqlite":
            raw = conn.connection.dbapi_connection
            assert raw is not None  # a connection in use holds its DBAPI connection
            if not raw.in_transaction:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

    @staticmethod
    def keep_events(conn: Connection, rows: list[dict[str, Any]]) -> set[str]:
        """Insert events (``event_id``, ``event_type``, ``telnyx_id``, ``occurred_at``, ``body``) that are not
        kept yet, in one statement; returns the ids that were new."""
        if not rows:
            return set()
        now = utcnow()
        # Sorted so two batches sharing events insert them in the same order and never deadlock on PostgreSQL.
        params = [{**row, "received_at": now} for row in sorted(rows, key=lambda r: r["event_id"])]
        return set(conn.execute(insert_ignoring(conn.dialect.name, events), params).scalars())

    @staticmethod
    def applied_events(conn: Connection, event_ids: list[str]) -> set[str]:
        """Which of ``event_ids`` were applied (read after :meth:`lock_messages`, so an applier that held the
        lock before us is seen)."""
        if not event_ids:
            return set()
        return set(conn.execute(_APPLIED_EVENTS, {"ids": sorted(event_ids)}).scalars())

    @staticmethod
    def lock_messages(conn: Connection, telnyx_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The messages with these Telnyx ids, by Telnyx id, locked until the end of the transaction on
        PostgreSQL (in id order, so concurrent batches queue instead of deadlocking)."""
        wanted = sorted(set(telnyx_ids))
        if not wanted:
            return {}
        return {row["telnyx_id"]: dict(row) for row in conn.execute(_LOCK_MESSAGES, {"ids": wanted}).mappings()}

    @staticmethod
    def write_folded(conn: Connection, changes: list[FoldedMessage]) -> None:
        """Write what a batch of events did to its messages, a statement per step for all of them.

        Each status a message passed through is its own UPDATE so the history trigger records it (a batch
        that takes a message from ``submitted`` to ``delivered`` shows ``sent`` in between); the last UPDATE
        also carries the columns the events changed.
        """
        if not changes:
            return
        now = utcnow()
        for step in range(max(len(c.moves) for c in changes) - 1):
            passing = [{"_id": c.id, "_status": c.moves[step][0], "_at": c.moves[step][1] or now, "_now": now}
                       for c in sorted(changes, key=lambda c: c.id) if len(c.moves) > step + 1]
            conn.execute(_PASS_STATUS, passing)
        conn.execute(_WRITE_FOLDED, [
            {"_id": c.id, "_status": c.status, "_at": (c.moves[-1][1] or now) if c.moves else c.status_at,
             "_parts": c.parts, "_cost": c.cost, "_errors": c.errors, "_recipient_statuses": c.recipient_statuses,
             "_now": now}
            for c in sorted(changes, key=lambda c: c.id)])

    @staticmethod
    def mark_events_applied(conn: Connection, event_ids: list[str]) -> None:
        if event_ids:
            conn.execute(_MARK_APPLIED, {"ids": sorted(event_ids), "_now": utcnow()})

    def parked_known(self, since: datetime, limit: int = 500) -> list[dict[str, Any]]:
        """Events received since ``since``, still parked, whose Telnyx id a message now has: ``event_id``,
        ``body``. An index holds only unapplied events, so this stays cheap to run every scheduler tick."""
        with self.reader.connect() as conn:
            return [dict(r) for r in conn.execute(_PARKED_KNOWN, {"since": since, "limit": limit}).mappings()]


    def unapplied_unbound(self, since: datetime, limit: int = 500) -> list[dict[str, Any]]:
        """Events received since ``since``, not applied, that name no outbound message (inbound messages, link
        clicks, anything else): ``event_id``, ``body``. Only ``sendq web``'s fallback leaves such events unapplied
        (a batch kept while Redis was down); a batch applied by a worker marks every one of them applied."""
        with self.reader.connect() as conn:
            return [dict(r) for r in conn.execute(_UNAPPLIED_UNBOUND, {"since": since, "limit": limit}).mappings()]

    def keep_unapplied(self, rows: list[dict[str, Any]]) -> set[str]:
        """Keep events for a later sweep (``sendq web`` while Redis is down), in one transaction; returns the ids
        that were new (the others were kept before: duplicates)."""
        with self.engine.begin() as conn:
            return self.keep_events(conn, rows)


@dataclass
class FoldedMessage:
    """A message after a batch of events: the statuses it moved through (``(status, at)``, in order) and the
    columns to write."""

    id: str
    status: str
    status_at: datetime | None
    moves: list[tuple[str, datetime | None]]
    parts: int | None
    cost: Any
    errors: list[dict[str, Any]]
    recipient_statuses: dict[str, str] | None


_APPLIED_EVENTS = sa.select(events.c.event_id).where(
    events.c.event_id.in_(sa.bindparam("ids", expanding=True)), events.c.applied_at.is_not(None))
_LOCK_MESSAGES = (sa.select(*(messages.c[name] for name in (
    "id", "telnyx_id", "status", "status_at", "kind", "priority", "recipients", "recipient_statuses", "errors",
    "parts", "cost")))
    .where(messages.c.telnyx_id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(messages.c.id).with_for_update())
_PASS_STATUS = (messages.update().where(messages.c.id == sa.bindparam("_id"))
                .values(status=sa.bindparam("_status"), status_at=sa.bindparam("_at"),
                        updated_at=sa.bindparam("_now")))
_WRITE_FOLDED = (messages.update().where(messages.c.id == sa.bindparam("_id"))
                 .values(status=sa.bindparam("_status"), status_at=sa.bindparam("_at"),
                         parts=sa.bindparam("_parts"), cost=sa.bindparam("_cost", type_=sa.JSON),
                         errors=sa.bindparam("_errors", type_=sa.JSON),
                         recipient_statuses=sa.bindparam("_recipient_statuses", type_=sa.JSON),
                         updated_at=sa.bindparam("_now")))
_MARK_APPLIED = (events.update().where(events.c.event_id.in_(sa.bindparam("ids", expanding=True)))
                 .values(applied_at=sa.bindparam("_now")))
_PARKED_KNOWN = (sa.select(events.c.event_id, events.c.body)
                 .join(messages, messages.c.telnyx_id == events.c.telnyx_id)
                 .where(events.c.applied_at.is_(None), events.c.received_at >= sa.bindparam("since"))
                 .order_by(events.c.received_at).limit(sa.bindparam("limit")))
_UNAPPLIED_UNBOUND = (sa.select(events.c.event_id, events.c.body)
                      .where(events.c.applied_at.is_(None), events.c.telnyx_id.is_(None),
                             events.c.received_at >= sa.bindparam("since"))
                      .order_by(events.c.received_at).limit(sa.bindparam("limit")))
