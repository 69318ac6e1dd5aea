"""Applying Telnyx events: any order and any duplication end in the same record."""

from __future__ import annotations

import itertools
import uuid

import pytest

from worker import events, statuses
from worker.store import NewMessage


def submitted(store, telnyx_id: str | None = None) -> tuple[str, str]:
    row, _ = store.insert(NewMessage(kind="long_code", priority="normal", recipients=["+13125550002"],
                                     endpoint="/messages", body={"to": "+13125550002", "text": "hi"}))
    telnyx_id = telnyx_id or str(uuid.uuid4())
    store.claim(row["id"])
    store.transition(row["id"], statuses.SUBMITTED, values={"telnyx_id": telnyx_id})
    return row["id"], telnyx_id


def event(event_type: str, telnyx_id: str, status: str, occurred_at: str, *, errors=()) -> dict:
    return {"data": {
        "event_type": event_type, "id": str(uuid.uuid4()), "occurred_at": occurred_at, "record_type": "event",
        "payload": {"id": telnyx_id, "direction": "outbound", "parts": 2,
                    "cost": {"amount": "0.0080", "currency": "USD"},
                    "sent_at": "2026-02-15T14:30:01.596+00:00",
                    "to": [{"phone_number": "+13125550002", "status": status}], "errors": list(errors)},
    }}


def lifecycle(telnyx_id: str, outcome: str) -> list[dict]:
    errors = [] if outcome == "delivered" else [{"code": "40008", "title": "Undeliverable"}]
    return [event("message.sent", telnyx_id, "sent", "2026-02-15T14:30:01.600+00:00"),
            event("message.finalized", telnyx_id, outcome, "2026-02-15T14:30:04.148+00:00", errors=errors)]


@pytest.mark.parametrize("outcome", ["delivered", "delivery_failed", "delivery_unconfirmed"])
@pytest.mark.parametrize("order", sorted(set(itertools.permutations([0, 1, 0, 1]))))
def test_any_order_and_duplication_of_events_ends_in_the_same_record(store, outcome, order):
    message_id, telnyx_id = submitted(store)
    stream = lifecycle(telnyx_id, outcome)

    for i in order:
        events.apply_event(store, stream[i])

    record = store.record(message_id)
    assert record["status"] == outcome
    assert [h["status"] for h in record["history"]] == ["queued", "sending", "submitted", "sent", outcome]
    assert record["parts"] == 2
    assert len(record["errors"]) == (0 if outcome == "delivered" else 1)


def test_a_redelivered_event_is_recognized(store):
    _, telnyx_id = submitted(store)
    sent = lifecycle(telnyx_id, "delivered")[0]

    assert events.apply_event(store, sent) == events.APPLIED
    assert events.apply_event(store, sent) == events.DUPLICATE


def test_an_event_before_the_telnyx_id_is_known_is_parked_then_applied(store):
    telnyx_id = str(uuid.uuid4())
    stream = lifecycle(telnyx_id, "delivered")
    assert [events.apply_event(store, e) for e in stream] == [events.PARKED, events.PARKED]

    message_id, _ = submitted(store, telnyx_id)
    assert events.apply_pending(store, message_id, telnyx_id) == 2

    assert store.record(message_id)["status"] == statuses.DELIVERED
    assert events.apply_event(store, stream[1]) == events.DUPLICATE


def test_an_inbound_or_unknown_event_changes_no_message(store):
    message_id, telnyx_id = submitted(store)
    inbound = {"data": {"event_type": "message.received", "id": str(uuid.uuid4()),
                        "payload": {"id": telnyx_id, "direction": "inbound", "text": "STOP",
                                    "from": {"phone_number": "+13125550002"},
                                    "to": [{"phone_number": "+13125550001"}]}}}

    # Recorded (and the STOP acted on, see test_inbound.py), but no outbound message moves.
    assert events.apply_event(store, inbound) == events.APPLIED
    assert store.record(message_id)["status"] == statuses.SUBMITTED
