"""Applying verified Telnyx events to the store.

Telnyx's events "can be concurrent, duplicated, delayed, or delivered out of order". Each is kept in the
store under its id (a redelivery finds it there), then moves the message forward by rank only, so any
order of ``message.sent`` and ``message.finalized`` ends in the same record. An event that arrives before
the send recorded its telnyx id stays parked until :func:`apply_pending` runs for that id.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from worker import statuses
from worker.store import Store

SENT = "message.sent"
FINALIZED = "message.finalized"

#: What apply_event reports, for metrics and tests.
APPLIED, DUPLICATE, PARKED, IGNORED = "applied", "duplicate", "parked", "ignored"


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _telnyx_id(data: Mapping[str, Any]) -> str | None:
    payload = data.get("payload")
    if isinstance(payload, Mapping) and payload.get("direction", "outbound") == "outbound":
        value = payload.get("id")
        return str(value) if value else None
    return None


def apply_event(store: Store, event: Mapping[str, Any]) -> str:
    """Keep ``event`` and apply it if its message is known. Returns one of the outcome constants."""
    data = event.get("data")
    if not isinstance(data, Mapping) or not data.get("id"):
        return IGNORED
    event_id = str(data["id"])
    telnyx_id = _telnyx_id(data)
    fresh = store.record_event(event_id, str(data.get("event_type") or data.get("record_type") or ""),
                               telnyx_id, parse_time(data.get("occurred_at")), event)
    if not fresh and store.event_applied(event_id):
        return DUPLICATE
    if telnyx_id is None or data.get("event_type") not in (SENT, FINALIZED):
        store.mark_applied(event_id)
        return IGNORED
    message_id = store.id_by_telnyx_id(telnyx_id)
    if message_id is None:
        return PARKED
    _apply_outbound(store, message_id, data)
    store.mark_applied(event_id)
    return APPLIED


def apply_pending(store: Store, message_id: str, telnyx_id: str) -> int:
    """Apply the events parked for ``telnyx_id`` now that the send recorded it; returns how many."""
    applied = 0
    for parked in store.pending_events(telnyx_id):
        data = parked["body"].get("data", {})
        if data.get("event_type") in (SENT, FINALIZED):
            _apply_outbound(store, message_id, data)
        store.mark_applied(parked["event_id"])
        applied += 1
    return applied


def _apply_outbound(store: Store, message_id: str, data: Mapping[str, Any]) -> None:
    payload = data.get("payload") or {}
    occurred_at = parse_time(data.get("occurred_at"))
    entries = [e for e in payload.get("to") or [] if isinstance(e, Mapping)] or [{}]
    details = _details(payload)
    if data.get("event_type") == SENT or entries[0].get("status") == statuses.SENT:
        store.transition(message_id, statuses.SENT, at=occurred_at, values=details)
        return
    errors = [_error(e) for e in payload.get("errors") or [] if isinstance(e, Mapping)]
    final = _final_status(store, message_id, entries)
    if final is None:
        if errors:
            store.add_errors(message_id, errors)  # a group recipient's failure, before the others are final
        return
    sent_at = parse_time(payload.get("sent_at"))
    if sent_at is not None:
        # A final event means the message was sent, whether or not message.sent has arrived yet.
        store.transition(message_id, statuses.SENT, at=sent_at, values=details)
    store.transition(message_id, final, at=occurred_at, values=details, add_errors=errors)


def _final_status(store: Store, message_id: str, entries: list[Mapping[str, Any]]) -> str | None:
    """The message's final status from this event, or None while it is not final yet.

    A single recipient's status is the message's. A group MMS gets one ``message.finalized`` per recipient:
    each is recorded, and the message is final once every recipient is, with their common status, or
    ``delivery_failed`` / ``delivery_unconfirmed`` when they differ (not everyone got it).
    """
    recipients = store.row(message_id)["recipients"]
    reported = [(e.get("phone_number"), e.get("status")) for e in entries if e.get("status") in statuses.TELNYX_FINAL]
    if len(recipients) == 1:
        return reported[0][1] if reported else None
    known: dict[str, str] = {}
    for number, status in reported:
        if number in recipients:
            known = store.set_recipient_status(message_id, number, status)
    if not known or set(known) != set(recipients) or not all(statuses.is_final(s) for s in known.values()):
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
