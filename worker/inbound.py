"""What recipients do: the messages they text to our numbers, and their clicks on links in ours.

Both arrive as Telnyx webhooks and are kept in the store once each: an inbound message by its Telnyx id
(``message.received``), a click by the id :func:`worker.events.event_id` derives from it (``link_clicked``
has no event id of its own). An inbound STOP or START also changes the suppression list; that is
:mod:`worker.events`' business, this module only records.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from worker.store import NamedRow, inbound_messages, insert_new, link_clicks, utcnow
from worker.suppressions import keyword

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from worker.store import Store


def _number(party: Any) -> str | None:
    if isinstance(party, Mapping):
        value = party.get("phone_number")
        return str(value) if value else None
    return None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


class Inbound:
    """Inbound messages and link clicks in the store."""

    def __init__(self, engine: Engine, reader: Engine | None = None) -> None:
        self.engine = engine
        self.reader = reader or engine

    @classmethod
    def of(cls, store: Store) -> Inbound:
        return cls(store.engine, store.reader)

    def record_message(self, payload: Mapping[str, Any], received_at: datetime | None) -> tuple[dict[str, Any], bool]:
        """Keep an inbound message (a ``message.received`` payload) Telnyx received at ``received_at``; returns
        ``(record, fresh)``, ``fresh`` False when the Telnyx id was recorded before (a redelivered message).
        """
        with self.engine.begin() as conn:
            return self.record_message_within(conn, payload, received_at)

    @staticmethod
    def record_message_within(conn: Connection, payload: Mapping[str, Any],
                              received_at: datetime | None) -> tuple[dict[str, Any], bool]:
        """:meth:`record_message` in the caller's transaction (a batch of events)."""
        to = [_number(t) for t in payload.get("to") or []]
        row = {
            "telnyx_id": str(payload.get("id") or ""), "from_number": _number(payload.get("from")) or "",
            "to_number": next((t for t in to if t), None), "text": payload.get("text"),
            "messaging_profile_id": payload.get("messaging_profile_id") or None,
            "keyword": keyword(payload.get("text")),
            "received_at": received_at or utcnow(), "body": dict(payload),
        }
        fresh = insert_new(conn, inbound_messages, row)
        return Inbound._as_record(row), fresh

    def message(self, telnyx_id: str) -> dict[str, Any] | None:
        query = inbound_messages.select().where(inbound_messages.c.telnyx_id == telnyx_id)
        with self.reader.connect() as conn:
            found = conn.execute(query).mappings().first()
        return self._as_record(found) if found else None

    def record_click(self, event_id: str, data: Mapping[str, Any], message_id: str | None,
                     clicked_at: datetime | None) -> bool:
        """Keep a ``link_clicked`` webhook's data against ``message_id`` (sendq's id, or None when unknown);
        False if it was kept before."""
        with self.engine.begin() as conn:
            return self.record_click_within(conn, event_id, data, message_id, clicked_at)

    @staticmethod
    def record_click_within(conn: Connection, event_id: str, data: Mapping[str, Any], message_id: str | None,
                            clicked_at: datetime | None) -> bool:
        """:meth:`record_click` in the caller's transaction (a batch of events)."""
        row = {"event_id": event_id, "message_id": message_id, "telnyx_message_id": str(data.get("message_id")),
               "recipient": data.get("to"), "url": data.get("url"), "clicked_at": clicked_at,
               "body": dict(data), "received_at": utcnow()}
        return insert_new(conn, link_clicks, row)

    def clicks(self, message_id: str) -> list[dict[str, Any]]:
        """A message's link clicks, oldest first: ``{"url", "to", "clicked_at"}``."""
        query = (sa.select(link_clicks.c.url, link_clicks.c.recipient, link_clicks.c.clicked_at)
                 .where(link_clicks.c.message_id == message_id).order_by(link_clicks.c.clicked_at))
        with self.reader.connect() as conn:
            return [{"url": url, "to": to, "clicked_at": _iso(at)} for url, to, at in conn.execute(query)]

    @staticmethod
    def _as_record(row: NamedRow) -> dict[str, Any]:
        """What the inbound hook receives: the message, with its media and the keyword it carried."""
        body = row["body"] or {}
        return {
            "id": row["telnyx_id"], "from": row["from_number"], "to": row["to_number"], "text": row["text"],
            "messaging_profile_id": row["messaging_profile_id"], "keyword": row["keyword"],
            "received_at": _iso(row["received_at"]), "type": body.get("type"), "media": body.get("media") or [],
            "cc": [_number(c) for c in body.get("cc") or []],
        }
