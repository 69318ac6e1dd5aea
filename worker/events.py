"""Applying verified Telnyx events to the store.

Telnyx's events "can be concurrent, duplicated, delayed, or delivered out of order". Each is kept in the
store under its id (a redelivery finds it there), then:

- ``message.sent`` / ``message.finalized`` move the message forward by rank only, so any order of them ends in
  the same record. An event that arrives before the send recorded its telnyx id stays parked until
  :func:`apply_pending` runs for that id. The change that makes a message final hands it to the status hook.
- ``message.received`` (inbound) is recorded (:mod:`worker.inbound`); a STOP-family keyword blocks the sender
  for the messaging profile (or, without one, the number) that received it, START / UNSTOP lifts that block
  (:mod:`worker.suppressions`); a message seen for the first time goes to the inbound hook.
- ``link_clicked`` (flat, with no event id: its id is derived from message, URL and time) is recorded against
  the message it names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from worker import metrics, statuses
from worker.inbound import Inbound
from worker.store import Store
from worker.suppressions import OPT_IN, OPT_OUT, STOP_KEYWORD, Suppressions

if TYPE_CHECKING:
    from worker.hooks import Hooks

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


def apply_events(store: Store, batch: Sequence[Mapping[str, Any]], hooks: Hooks | None = None) -> list[str]:
    """Apply a batch of verified events (as ``sendq web`` gathers them); one outcome constant per event."""
    return [apply_event(store, event, hooks) for event in batch]


def apply_event(store: Store, event: Mapping[str, Any], hooks: Hooks | None = None) -> str:
    """Keep ``event`` and apply it if its message is known. Returns one of the outcome constants.

    ``hooks`` (optional) receives inbound messages and messages this event made final.
    """
    data = event.get("data")
    found_id = event_id(event)
    if not isinstance(data, Mapping) or found_id is None:
        return IGNORED
    kind = str(data.get("event_type") or data.get("record_type") or "")
    telnyx_id = _telnyx_id(data)
    fresh = store.record_event(found_id, kind, telnyx_id, parse_time(data.get("occurred_at")), event)
    if not fresh and store.event_applied(found_id):
        return DUPLICATE
    local = _RECIPIENT_EVENTS.get(kind)
    if local is not None:
        outcome = local(store, data, found_id, hooks)
        store.mark_applied(found_id)
        return outcome
    if telnyx_id is None or kind not in (SENT, FINALIZED):
        store.mark_applied(found_id)
        return IGNORED
    message_id = store.id_by_telnyx_id(telnyx_id)
    if message_id is None:
        return PARKED
    _apply_outbound(store, message_id, data, hooks)
    store.mark_applied(found_id)
    return APPLIED


def _apply_inbound(store: Store, data: Mapping[str, Any], found_id: str, hooks: Hooks | None) -> str:
    """Record an inbound message; act on a STOP or START keyword; hand a new message to the inbound hook."""
    payload = data.get("payload")
    if not isinstance(payload, Mapping) or not payload.get("id") or not isinstance(payload.get("from"), Mapping):
        return IGNORED  # nothing to record it under
    if not payload["from"].get("phone_number"):
        return IGNORED
    received_at = parse_time(payload.get("received_at")) or parse_time(data.get("occurred_at"))
    record, fresh = Inbound.of(store).record_message(payload, received_at)
    recipient, profile, number = record["from"], record["messaging_profile_id"], record["to"]
    if profile or number:
        suppressions = Suppressions.of(store)
        if record["keyword"] in OPT_OUT:
            suppressions.add(recipient, profile=profile, number=number, source=STOP_KEYWORD,
                             keyword=record["keyword"], at=received_at)
        elif record["keyword"] in OPT_IN:
            suppressions.opt_in(recipient, profile=profile, number=number, at=received_at)
    if fresh and hooks is not None:
        hooks.inbound_message(record)
    return APPLIED


def _apply_click(store: Store, data: Mapping[str, Any], found_id: str, hooks: Hooks | None) -> str:
    """Record a link click against the message it names (by Telnyx id; kept even if the message is unknown)."""
    message_id = store.id_by_telnyx_id(str(data["message_id"]))
    Inbound.of(store).record_click(found_id, data, message_id, parse_time(data.get("time_clicked")))
    return APPLIED


#: Events about what recipients did, applied without a message of ours to move.
_RECIPIENT_EVENTS: dict[str, Callable[[Store, Mapping[str, Any], str, Any], str]] = {
    RECEIVED: _apply_inbound, LINK_CLICKED: _apply_click,
}


def apply_pending(store: Store, message_id: str, telnyx_id: str, hooks: Hooks | None = None) -> int:
    """Apply the events parked for ``telnyx_id`` now that the send recorded it; returns how many."""
    applied = 0
    for parked in store.pending_events(telnyx_id):
        data = parked["body"].get("data", {})
        if data.get("event_type") in (SENT, FINALIZED):
            _apply_outbound(store, message_id, data, hooks)
        store.mark_applied(parked["event_id"])
        applied += 1
    return applied


def _apply_outbound(store: Store, message_id: str, data: Mapping[str, Any], hooks: Hooks | None = None) -> None:
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
    moved = store.transition(message_id, final, at=occurred_at, values=details, add_errors=errors)
    if moved:
        _count_final(store, message_id, final, payload, occurred_at)
    if moved and hooks is not None:
        hooks.final_status(store, message_id, final)


def _count_final(store: Store, message_id: str, final: str, payload: Mapping[str, Any],
                 occurred_at: datetime | None) -> None:
    """The outcome metric, and accepted-to-final latency on Telnyx's clock (``received_at`` to completion)."""
    row = store.row(message_id)
    metrics.MESSAGES.labels(final, row["kind"], row["priority"]).inc()
    metrics.observe_final(final, parse_time(payload.get("received_at")),
                          parse_time(payload.get("completed_at")) or occurred_at)


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
