"""One message's events folded onto its row, in Python: forward by status rank only, group MMS recipients
one by one, never out of a final status."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from worker import statuses
from worker.events.parsing import SENT, Event, parse_time
from worker.store import FoldedMessage


class Fold:
    """One message's events folded onto its row: forward by rank only, never out of a final status."""

    def __init__(self, row: Mapping[str, Any]) -> None:
        self.row = row
        self.status: str = row["status"]
        self.moves: list[tuple[str, datetime | None]] = []
        self.values: dict[str, Any] = {"parts": row["parts"], "cost": row["cost"]}
        self.errors: list[dict[str, Any]] = list(row["errors"] or [])
        self.recipient_statuses: dict[str, str] = dict(row["recipient_statuses"] or {})
        self.changed = False
        #: The payload of the event that made the message final, and when it happened.
        self.final_event: Mapping[str, Any] | None = None
        self.final_at: datetime | None = None
        self._events: list[Event] = []

    def add(self, item: Event) -> None:
        self._events.append(item)

    def folded(self) -> FoldedMessage:
        return FoldedMessage(id=self.row["id"], status=self.status, status_at=self.row["status_at"],
                             moves=self.moves, parts=self.values["parts"], cost=self.values["cost"],
                             errors=self.errors, recipient_statuses=self.recipient_statuses or None)

    def run(self) -> None:
        for item in sorted(self._events, key=lambda e: e.rank):
            self._apply(item.data)

    def _move(self, to: str, at: datetime | None, details: Mapping[str, Any]) -> bool:
        if self.status not in statuses.lower_than(to):
            return False
        self.status = to
        self.moves.append((to, at))
        self.values.update(details)
        self.changed = True
        return True

    def _apply(self, data: Mapping[str, Any]) -> None:
        payload = data.get("payload") or {}
        occurred_at = parse_time(data.get("occurred_at"))
        entries = [e for e in payload.get("to") or [] if isinstance(e, Mapping)] or [{}]
        details = _details(payload)
        if data.get("event_type") == SENT or entries[0].get("status") == statuses.SENT:
            self._move(statuses.SENT, occurred_at, details)
            return
        errors = [_error(e) for e in payload.get("errors") or [] if isinstance(e, Mapping)]
        final = self._final_status(entries)
        if final is None:
            if errors:  # a group recipient's failure, before the others are final
                self.errors.extend(errors)
                self.changed = True
            return
        sent_at = parse_time(payload.get("sent_at"))
        if sent_at is not None:
            # A final event means the message was sent, whether or not message.sent has arrived yet.
            self._move(statuses.SENT, sent_at, details)
        if self._move(final, occurred_at, details):
            self.errors.extend(errors)
            self.final_event, self.final_at = payload, occurred_at

    def _final_status(self, entries: list[Mapping[str, Any]]) -> str | None:
        """The message's final status from this event, or None while it is not final yet.

        A single recipient's status is the message's. A group MMS gets one ``message.finalized`` per recipient:
        each is recorded, and the message is final once every recipient is, with their common status, or
        ``delivery_failed`` / ``delivery_unconfirmed`` when they differ (not everyone got it).
        """
        recipients = self.row["recipients"]
        reported: list[tuple[str | None, str]] = [(e.get("phone_number"), e["status"]) for e in entries
                                                  if e.get("status") in statuses.TELNYX_FINAL]
        if len(recipients) == 1:
            return reported[0][1] if reported else None
        known = self.recipient_statuses
        named = False
        for number, status in reported:
            if number is not None and number in recipients:
                named = True
                if statuses.RANK[status] > statuses.RANK[known.get(number, statuses.SUBMITTED)]:
                    known[number] = status
                    self.changed = True
        if not named or set(known) != set(recipients) or not all(statuses.is_final(s) for s in known.values()):
            return None
        outcomes = set(known.values())
        if len(outcomes) == 1:
            return outcomes.pop()
        failed = {statuses.DELIVERY_FAILED, statuses.SENDING_FAILED, statuses.EXPIRED}
        return statuses.DELIVERY_FAILED if outcomes & failed else statuses.DELIVERY_UNCONFIRMED


def _details(payload: Mapping[str, Any]) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if isinstance(payload.get("parts"), int):
        details["parts"] = payload["parts"]
    cost = payload.get("cost")
    if isinstance(cost, Mapping) and cost.get("amount") is not None:
        details["cost"] = {"amount": str(cost["amount"]), "currency": cost.get("currency")}
    return details


def _error(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {"code": str(raw.get("code", "")), "title": raw.get("title"), "detail": raw.get("detail")}
