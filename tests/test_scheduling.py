"""Scheduled sends, cancellation and validity, on both store backends with real Redis and workers."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from producers.producer import Producer
from worker import statuses
from worker.actors import Actors
from worker.broker import build_broker
from worker.errors import ConflictError, ValidationError
from worker.pool import start_worker
from worker.scheduler import Scheduler
from worker.services import Services
from worker.store import messages

FROM = "+13125550001"


def statuses_of(record) -> list[str]:
    return [h["status"] for h in record["history"]]


def test_a_scheduled_message_waits_until_due_then_goes_out(stack, scheduler):
    send_at = datetime.now(UTC) + timedelta(seconds=1.5)
    accepted = stack.producer.submit("+13125550002", from_=FROM, text="later", send_at=send_at)
    assert accepted["status"] == statuses.SCHEDULED

    record = stack.wait_final(accepted["id"])

    assert record["status"] == statuses.DELIVERED
    assert statuses_of(record) == ["scheduled", "queued", "sending", "submitted", "sent", "delivered"]
    sending_at = datetime.fromisoformat(record["history"][2]["at"])
    assert sending_at >= send_at  # never early
    assert record["send_at"] == send_at.isoformat()


def test_a_message_a_year_ahead_is_kept_and_not_promoted(stack, scheduler):
    message_id = stack.producer.send("+13125550002", from_=FROM, text="next year",
                                     send_at=datetime.now(UTC) + timedelta(days=365))
    time.sleep(0.3)

    assert stack.producer.status(message_id)["status"] == statuses.SCHEDULED
    assert stack.sim_messages() == []


@pytest.mark.parametrize(("send_at", "reason"), [
    ("2026-01-01T09:00:00", "UTC offset"),
    ("tomorrow", "ISO-8601"),
    ((datetime.now(UTC) - timedelta(hours=1)).isoformat(), "past"),
    ((datetime.now(UTC) + timedelta(days=400)).isoformat(), "year"),
])
def test_a_bad_send_at_is_refused(stack, send_at, reason):
    with pytest.raises(ValidationError) as refused:
        stack.producer.send("+13125550002", from_=FROM, text="x", send_at=send_at)

    assert refused.value.field == "send_at"
    assert reason in refused.value.reason


def test_two_schedulers_never_promote_a_message_twice(stack):
    due = datetime.now(UTC) + timedelta(seconds=1)
    ids = [stack.producer.send(f"+1312555{i:04d}", from_=FROM, text="due", send_at=due) for i in range(40)]
    schedulers = [Scheduler(stack.settings, stack.services.store, stack.actors) for _ in range(2)]
    promoted = [0, 0]
    barrier = threading.Barrier(2)

    def run(i: int) -> None:
        barrier.wait()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            promoted[i] += schedulers[i].promote_due()
            time.sleep(0.01)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sum(promoted) == 40
    records = [stack.wait_final(i) for i in ids]
    assert all(statuses_of(r).count("queued") == 1 for r in records)
    assert sorted(m.idempotency_key for m in stack.sim_messages()) == sorted(ids)


def test_cancel_and_a_claiming_worker_race_and_exactly_one_wins(base_settings, simulator, store):
    settings = base_settings.model_copy(update={"telnyx_base_url": f"{simulator.url}/v2"})
    producer = Producer(settings, store, Actors(build_broker(settings)))
    ids = [producer.send(f"+1312555{i:04d}", from_=FROM, text="race") for i in range(60)]
    broker = build_broker(settings)
    actors = Actors(broker, Services.build(settings, redis_client=broker.client, store=store))
    worker = start_worker(actors, threads=4)  # works from the first message while cancels start at the last
    outcomes: dict[str, str] = {}
    try:
        for message_id in reversed(ids):
            try:
                producer.cancel(message_id)
                outcomes[message_id] = "cancelled"
            except ConflictError:
                outcomes[message_id] = "too late"
        actors.broker.join("default", timeout=20_000)
    finally:
        worker.stop()
        actors.broker.close()
        producer.actors.broker.close()

    sent = {m.idempotency_key for m in simulator.state.messages.values()}
    for message_id, outcome in outcomes.items():
        status = store.row(message_id)["status"]
        if outcome == "cancelled":
            assert status == statuses.CANCELLED and message_id not in sent
        else:
            assert status != statuses.CANCELLED and message_id in sent
    print("race:", list(outcomes.values()).count("cancelled"), "of", len(ids), "cancelled")


def test_cancel_before_sending_twice_and_too_late(stack):
    later = stack.producer.send("+13125550002", from_=FROM, text="x", send_at=datetime.now(UTC) + timedelta(hours=1))
    assert stack.producer.cancel(later)["status"] == statuses.CANCELLED
    assert stack.producer.cancel(later)["status"] == statuses.CANCELLED  # harmless

    done = stack.producer.send("+13125550002", from_=FROM, text="now")
    stack.wait_final(done)
    with pytest.raises(ConflictError) as refused:
        stack.producer.cancel(done)
    assert refused.value.status == statuses.DELIVERED
    assert "too late" in str(refused.value)


def test_telnyx_side_scheduling_and_cancel_through_the_simulator(stack):
    send_at = datetime.now(UTC) + timedelta(minutes=10)
    message_id = stack.producer.send("+13125550002", from_=FROM, text="at telnyx", send_at=send_at,
                                     schedule_mode="telnyx")

    record = stack.wait_for(message_id, lambda r: r["status"] == statuses.SCHEDULED and r["telnyx_id"])
    [held] = stack.sim_messages()
    assert held.endpoint == "/v2/messages/schedule"
    assert held.payload["to"][0]["status"] == "scheduled"
    assert record["telnyx_id"] == held.id

    assert stack.producer.cancel(message_id)["status"] == statuses.CANCELLED
    assert held.cancelled and held.payload["to"][0]["status"] == "cancelled"


def test_telnyx_side_cancel_inside_the_last_minute_is_refused(stack):
    message_id = stack.producer.send("+13125550002", from_=FROM, text="x", schedule_mode="telnyx",
                                     send_at=datetime.now(UTC) + timedelta(minutes=10))
    stack.wait_for(message_id, lambda r: r["status"] == statuses.SCHEDULED and r["telnyx_id"])
    [held] = stack.sim_messages()
    held.send_at = datetime.now(UTC) + timedelta(seconds=30)  # Telnyx's clock says: within the minute

    with pytest.raises(ConflictError) as refused:
        stack.producer.cancel(message_id)

    assert "Telnyx refused" in str(refused.value)
    assert stack.producer.status(message_id)["status"] == statuses.SCHEDULED


@pytest.mark.parametrize("send_at", [timedelta(minutes=2), timedelta(days=6)])
def test_telnyx_side_scheduling_outside_its_window_is_refused(stack, send_at):
    with pytest.raises(ValidationError) as refused:
        stack.producer.send("+13125550002", from_=FROM, text="x", schedule_mode="telnyx",
                            send_at=datetime.now(UTC) + send_at)
    assert refused.value.field == "send_at"


def test_a_message_not_handed_to_telnyx_in_time_expires_unsent(base_settings, simulator, store):
    settings = base_settings.model_copy(update={"telnyx_base_url": f"{simulator.url}/v2"})
    producer = Producer(settings, store, Actors(build_broker(settings)))
    message_id = producer.send("+13125550002", from_=FROM, text="2FA 123456", valid_for=1)
    time.sleep(1.2)  # no worker yet: the code goes stale in the queue

    broker = build_broker(settings)
    services = Services.build(settings, redis_client=broker.client, store=store)
    actors = Actors(broker, services)
    worker = start_worker(actors, threads=2)
    try:
        deadline = time.monotonic() + 10
        while store.row(message_id)["status"] == statuses.QUEUED and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
        actors.broker.close()
        producer.actors.broker.close()

    record = store.record(message_id)
    assert record["status"] == statuses.EXPIRED
    assert record["attempts"] == 0
    assert simulator.state.messages == {}


def test_urgent_messages_get_the_default_validity(stack):
    message_id = stack.producer.send("+13125550002", from_=FROM, text="2FA", priority="urgent")
    valid_until = datetime.fromisoformat(stack.producer.status(message_id)["valid_until"])
    created_at = datetime.fromisoformat(stack.producer.status(message_id)["created_at"])

    assert timedelta(seconds=590) < valid_until - created_at <= timedelta(seconds=600)


def test_bad_valid_for_is_refused(stack):
    with pytest.raises(ValidationError) as refused:
        stack.producer.send("+13125550002", from_=FROM, text="x", valid_for=0)
    assert refused.value.field == "valid_for"
    with stack.services.store.engine.connect() as conn:
        assert conn.execute(messages.select()).all() == []
