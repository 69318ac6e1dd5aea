"""Applying Telnyx events: any order and any duplication end in the same record."""

from __future__ import annotations

import itertools
import random
import threading
import uuid
from collections import Counter

import pytest

from worker import events, statuses
from worker.scheduler import Scheduler
from worker.store import NewMessage
from worker.suppressions import Suppressions


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


GROUP = ["+13125550002", "+13125550003", "+13125550004"]


def submitted_group(store, telnyx_id: str | None = None) -> tuple[str, str]:
    row, _ = store.insert(NewMessage(kind="long_code", priority="normal", recipients=GROUP, endpoint="/messages",
                                     body={"to": GROUP, "text": "hi"}))
    telnyx_id = telnyx_id or str(uuid.uuid4())
    store.claim(row["id"])
    store.transition(row["id"], statuses.SUBMITTED, values={"telnyx_id": telnyx_id})
    return row["id"], telnyx_id


def group_finalized(telnyx_id: str, number: str, status: str, occurred_at: str) -> dict:
    found = event("message.finalized", telnyx_id, status, occurred_at)
    found["data"]["payload"]["to"] = [{"phone_number": number, "status": status}]
    if status != "delivered":
        found["data"]["payload"]["errors"] = [{"code": "40008", "title": "Undeliverable"}]
    return found


def comparable(store, message_id: str) -> dict:
    """A record without what differs between two messages made alike (ids, times: which event's time a status
    takes can depend on the order events came in, when one implies another)."""
    record = store.record(message_id)
    return {"status": record["status"], "parts": record["parts"], "cost": record["cost"],
            "errors": record["errors"], "recipient_statuses": record["recipient_statuses"],
            "history": [h["status"] for h in record["history"]]}


def workload(store, seed: int) -> tuple[list[str], list[dict]]:
    """Messages of every shape with their events, shuffled and partly duplicated, plus an early event."""
    rng = random.Random(seed)
    ids, stream = [], []
    for outcome in ("delivered", "delivery_failed", "delivery_unconfirmed", "delivered", "sending_failed"):
        message_id, telnyx_id = submitted(store)
        ids.append(message_id)
        stream += lifecycle(telnyx_id, outcome)
    message_id, telnyx_id = submitted(store)  # message.sent only: ends sent
    ids.append(message_id)
    stream.append(lifecycle(telnyx_id, "delivered")[0])
    message_id, telnyx_id = submitted_group(store)
    ids.append(message_id)
    stream += [group_finalized(telnyx_id, GROUP[0], "delivered", "2026-02-15T14:30:04.000+00:00"),
               group_finalized(telnyx_id, GROUP[1], "delivery_failed", "2026-02-15T14:30:05.000+00:00"),
               group_finalized(telnyx_id, GROUP[2], "delivered", "2026-02-15T14:30:06.000+00:00")]
    stream += lifecycle(str(uuid.uuid4()), "delivered")[:1]  # a message not known (yet): parked
    stream += rng.sample(stream, 4)  # redeliveries
    rng.shuffle(stream)
    return ids, stream


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_batch_for_many_messages_ends_where_the_events_one_by_one_end(store, seed):
    one_by_one_ids, one_by_one = workload(store, seed)
    batch_ids, batch = workload(store, seed)

    singles = [events.apply_event(store, e) for e in one_by_one]
    together = events.apply_events(store, batch)

    assert together == singles
    assert events.PARKED in together
    for single, batched in zip(one_by_one_ids, batch_ids, strict=True):
        assert comparable(store, batched) == comparable(store, single)
    group = store.record(batch_ids[-1])
    assert group["status"] == statuses.DELIVERY_FAILED
    assert group["recipient_statuses"] == {GROUP[0]: "delivered", GROUP[1]: "delivery_failed", GROUP[2]: "delivered"}


def test_concurrent_batches_on_the_same_messages_apply_each_event_once(store):
    messages = [submitted(store) for _ in range(12)]
    outcomes = ["delivered", "delivery_failed"]
    stream = [e for i, (_, telnyx_id) in enumerate(messages) for e in lifecycle(telnyx_id, outcomes[i % 2])]
    results: list[list[tuple[str, str]]] = []
    failures: list[BaseException] = []

    def run(seed: int) -> None:
        rng = random.Random(seed)
        batch = rng.sample(stream, len(stream))
        try:
            decided = events.apply_events(store, batch)
            results.append([(e["data"]["id"], o) for e, o in zip(batch, decided, strict=True)])
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads) and not failures, failures

    applied = Counter(event_id for result in results for event_id, outcome in result if outcome == events.APPLIED)
    assert applied == Counter(e["data"]["id"] for e in stream)  # each event applied exactly once
    for i, (message_id, _) in enumerate(messages):
        record = store.record(message_id)
        assert [h["status"] for h in record["history"]] == ["queued", "sending", "submitted", "sent", outcomes[i % 2]]
        assert len(record["errors"]) == i % 2


def test_an_event_kept_but_not_applied_is_applied_when_its_batch_comes_again(store):
    message_id, telnyx_id = submitted(store)
    final = lifecycle(telnyx_id, "delivered")[1]
    data = final["data"]
    store.record_event(data["id"], data["event_type"], telnyx_id, events.parse_time(data["occurred_at"]), final)

    assert events.apply_events(store, [final, final]) == [events.APPLIED, events.DUPLICATE]
    assert store.record(message_id)["status"] == statuses.DELIVERED


def test_the_sweep_applies_events_parked_while_the_send_recorded_their_telnyx_id(store):
    telnyx_id = str(uuid.uuid4())
    assert events.apply_events(store, lifecycle(telnyx_id, "delivered")) == [events.PARKED, events.PARKED]
    assert events.apply_parked_known(store) == 0

    # The send records the Telnyx id, but (the race) finds no parked event to apply.
    message_id, _ = submitted(store, telnyx_id)
    assert store.record(message_id)["status"] == statuses.SUBMITTED

    assert events.apply_parked_known(store) == 2
    record = store.record(message_id)
    assert [h["status"] for h in record["history"]] == ["queued", "sending", "submitted", "sent", "delivered"]
    assert events.apply_parked_known(store) == 0


def test_the_scheduler_tick_runs_the_sweep(stack):
    store = stack.services.store
    telnyx_id = str(uuid.uuid4())
    events.apply_events(store, lifecycle(telnyx_id, "delivered"))
    message_id, _ = submitted(store, telnyx_id)

    assert Scheduler(stack.settings, store, stack.actors).tick()["parked_applied"] == 2
    assert store.record(message_id)["status"] == statuses.DELIVERED


def inbound(text: str, sender: str, at: str) -> dict:
    return {"data": {"event_type": "message.received", "id": str(uuid.uuid4()), "occurred_at": at,
                     "payload": {"id": str(uuid.uuid4()), "direction": "inbound", "text": text, "received_at": at,
                                 "messaging_profile_id": "4001767e-ce0f-4cae-9d5f-0d5e636e7809",
                                 "from": {"phone_number": sender}, "to": [{"phone_number": "+13125550001"}]}}}


def test_a_stop_and_a_later_start_in_concurrent_batches_end_unblocked(store):
    senders = [f"+1312555{n:04d}" for n in range(8)]
    stops = [inbound("STOP", s, "2026-02-15T20:00:00+00:00") for s in senders]
    starts = [inbound("START", s, "2026-02-15T20:00:05+00:00") for s in reversed(senders)]
    barrier = threading.Barrier(2)
    failures: list[BaseException] = []

    def run(batch: list[dict]) -> None:
        barrier.wait()
        try:
            events.apply_events(store, batch)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(batch,)) for batch in (stops, starts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
    suppressions = Suppressions.of(store)
    assert suppressions.suppressed(senders, sender="+13125550001", profile="4001767e-ce0f-4cae-9d5f-0d5e636e7809") == []
