"""A Telnyx event as sendq reads it: its kind, the id it is kept under, its Telnyx message id and its place in
its message's fold; and the outcomes applying one reports."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from worker import statuses

SENT = "message.sent"
FINALIZED = "message.finalized"
RECEIVED = "message.received"
#: The ``record_type`` of a link-click webhook, which has no ``event_type``.
LINK_CLICKED = "link_clicked"

#: What apply_event reports, for metrics and tests.
APPLIED, DUPLICATE, PARKED, IGNORED = "applied", "duplicate", "parked", "ignored"


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def event_id(event: Mapping[str, Any]) -> str | None:
    """The id an event is kept and deduplicated under: Telnyx's ``data.id``, or for a link click (which has
    none) ``click:`` and a digest of its message id, URL and time (URLs are too long for the events table)."""
    data = event.get("data")
    if not isinstance(data, Mapping):
        return None
    if data.get("record_type") == LINK_CLICKED:
        if not data.get("message_id"):
            return None
        key = f"{data.get('message_id')}|{data.get('url')}|{data.get('time_clicked')}"
        return "click:" + hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()
    return str(data["id"]) if data.get("id") else None


def _telnyx_id(data: Mapping[str, Any]) -> str | None:
    payload = data.get("payload")
    if isinstance(payload, Mapping) and payload.get("direction", "outbound") == "outbound":
        value = payload.get("id")
        return str(value) if value else None
    return None


_NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Event:
    event_id: str
    kind: str
    telnyx_id: str | None
    data: Mapping[str, Any]
    body: Mapping[str, Any]

    @classmethod
    def parse(cls, event: Mapping[str, Any], stored_id: str | None = None) -> Event | None:
        data = event.get("data") if isinstance(event, Mapping) else None
        found_id = stored_id or event_id(event)
        if not isinstance(data, Mapping) or found_id is None:
            return None
        return cls(found_id, str(data.get("event_type") or data.get("record_type") or ""), _telnyx_id(data),
                   data, event)

    @property
    def outbound(self) -> bool:
        """An event that moves one of our messages (once its Telnyx id is known)."""
        return self.telnyx_id is not None and self.kind in (SENT, FINALIZED)

    @property
    def rank(self) -> tuple[int, bool, datetime]:
        """Where the event goes in its message's fold: lower status rank first, then earlier ``occurred_at``."""
        payload = self.data.get("payload")
        entries = (payload.get("to") if isinstance(payload, Mapping) else None) or [{}]
        first = entries[0] if isinstance(entries[0], Mapping) else {}
        is_sent = self.kind == SENT or first.get("status") == statuses.SENT
        at = parse_time(self.data.get("occurred_at"))
        return (statuses.RANK[statuses.SENT] if is_sent else statuses.RANK[statuses.DELIVERED], at is None,
                at or _NEVER)

    def row(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "event_type": self.kind, "telnyx_id": self.telnyx_id,
                "occurred_at": parse_time(self.data.get("occurred_at")), "body": dict(self.body)}
