"""The reconciler: stuck sends re-sent with the same Idempotency-Key (or failed, by policy), and messages whose
final webhook never came fetched from Telnyx. Real worker, simulator, Redis and store throughout."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from producers.producer import Producer
from worker import statuses
from worker.actors import Actors
from worker.broker import build_broker
from worker.events import FINALIZED, SENT
from worker.pool import start_worker
from worker.reconcile import Reconciler, synthetic_event
from worker.scheduler import Scheduler
from worker.services import Services
from worker.serving import ServerThread
from worker.simulator import Simulator, SimulatorConfig
from worker.simulator import create_app as create_simulator_app
from worker.store import NewMessage, Store, messages, utcnow

FROM, TO = "+13125550001", "+13125550002"


def new_message(text: str, webhook_url: str | None) -> NewMessage:
    body = {"to": TO, "from": FROM, "text": text, **({"webhook_url": webhook_url} if webhook_url else {})}
    return NewMessage(kind="long_code", priority="normal", recipients=[TO], endpoint="/messages", body=body,
                      sender=FROM)


def backdate(store: Store, message_id: str, seconds: float, *, created: bool = False) -> None:
    """As if the message's last change (and, with ``created``, its creation) were ``seconds`` ago."""
    then = utcnow() - timedelta(seconds=seconds)
    values = {"updated_at": then, **({"created_at": then} if created else {})}
    with store.engine.begin() as conn:
        conn.execute(messages.update().where(messages.c.id == message_id).values(**values))


def stuck_after_an_ambiguous_send(stack, text: str) -> str:
    """A message claimed (`sending`) whose worker was lost after Telnyx accepted it: the request went out with
    the message id as Idempotency-Key, the answer never came back."""
    store = stack.services.store
    row, _ = store.insert(new_message(text, stack.settings.webhook_url))
    claimed = store.claim(row["id"])
    assert claimed is not None
    stack.services.telnyx.messages.send(claimed["endpoint"], claimed["body"], idempotency_key=row["id"])
    backdate(store, row["id"], stack.settings.sending_lease_s + 1)
    return row["id"]


def reconciler(stack, **settings: Any) -> Reconciler:
    return Reconciler(stack.settings.model_copy(update=settings), stack.services.store, stack.services.telnyx,
                      stack.actors)


# -- stuck sends ----------------------------------------------------------------------------------------------

def test_a_stuck_send_is_retried_with_the_same_key_and_delivered_exactly_once(stack, scheduler):
    # The scheduler runs as in production: the first attempt's webhooks, parked while its Telnyx id was unknown,
    # can commit just after the retry looked for them, and then its parked sweep applies them.
    message_id = stuck_after_an_ambiguous_send(stack, "stuck")

    assert reconciler(stack).stuck_sending() == 1
    record = stack.wait_final(message_id)

    assert record["status"] == statuses.DELIVERED
    assert len(stack.sim_messages()) == 1  # Telnyx answered the retry with the first attempt's message
    assert stack.sim_messages()[0].id == record["telnyx_id"]
    assert [e["code"] for e in record["errors"]] == ["ambiguous"]
    assert [h["status"] for h in record["history"]][:4] == ["queued", "sending", "queued", "sending"]
    assert record["attempts"] == 2


@pytest.mark.parametrize(("policy", "max_retries", "why"), [
    ("fail", 5, "SENDQ_AMBIGUOUS_POLICY=fail"),
    ("retry", 0, "attempts used"),
])
def test_a_stuck_send_is_failed_as_ambiguous_by_policy_or_when_out_of_attempts(stack, policy, max_retries, why):
    message_id = stuck_after_an_ambiguous_send(stack, "stuck")

    assert reconciler(stack, ambiguous_policy=policy, send_max_retries=max_retries).stuck_sending() == 0
    record = stack.producer.status(message_id)

    assert record["status"] == statuses.FAILED
    assert record["errors"][-1]["code"] == "ambiguous"
    assert why in record["errors"][-1]["detail"]
    assert len(stack.sim_messages()) == 1  # nothing sent again


def test_a_send_within_its_lease_is_left_alone(stack):
    store = stack.services.store
    row, _ = store.insert(new_message("in flight", None))
    assert store.claim(row["id"]) is not None

    assert reconciler(stack).stuck_sending() == 0
    assert store.row(row["id"])["status"] == statuses.SENDING


# -- missing final webhooks -----------------------------------------------------------------------------------

@pytest.fixture
def quiet_stack(base_settings, request) -> Iterator[Any]:
    """A worker and the simulator with no webhooks at all (none configured anywhere): every final status must
    come from the reconciler. ``request.param`` may change the SimulatorConfig."""
    config = SimulatorConfig(**{"sent_delay_s": 0.02, "final_delay_s": 0.02, **getattr(request, "param", {})})
    sim = Simulator(config)
    with ServerThread(create_simulator_app(sim)) as server:
        settings = base_settings.model_copy(update={"telnyx_base_url": f"{server.url}/v2", "webhook_url": None,
                                                    "finalize_after_s": 60})
        services = Services.build(settings)
        actors = Actors(build_broker(settings), services)
        worker = start_worker(actors, threads=2, idle_poll_ms=50)
        try:
            yield settings, sim, services, actors, Producer(settings, services.store, actors)
        finally:
            worker.stop()
            actors.broker.close()
            services.close()


def submitted_without_webhooks(quiet_stack, text: str, final: bool = True) -> str:
    settings, sim, services, _, producer = quiet_stack
    message_id = producer.send(TO, from_=FROM, text=text)
    wait(lambda: services.store.row(message_id)["status"] == statuses.SUBMITTED)
    wanted = "delivered" if final else "sent"
    wait(lambda: all(r["status"] == wanted for m in sim.state.messages.values() for r in m.payload["to"]))
    time.sleep(0.1)
    assert services.store.row(message_id)["status"] == statuses.SUBMITTED  # no webhook came
    backdate(services.store, message_id, settings.finalize_after_s + 1)
    return message_id


def wait(predicate, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_lost_final_webhook_is_fetched_and_applied_once(quiet_stack):
    settings, _, services, actors, producer = quiet_stack
    message_id = submitted_without_webhooks(quiet_stack, "lost webhook")
    running = Reconciler(settings, services.store, services.telnyx, actors)

    assert running.unfinalized() == 1
    record = producer.status(message_id)
    assert record["status"] == statuses.DELIVERED
    assert [h["status"] for h in record["history"]] == ["queued", "sending", "submitted", "sent", "delivered"]
    assert record["cost"] is not None
    assert running.unfinalized() == 0  # final now: not asked about again


@pytest.mark.parametrize("quiet_stack", [{"final_delay_s": 3600}], indirect=True)
def test_a_message_telnyx_is_still_on_is_advanced_then_not_asked_again_until_due(quiet_stack):
    settings, _, services, actors, _ = quiet_stack
    message_id = submitted_without_webhooks(quiet_stack, "slow carrier", final=False)
    running = Reconciler(settings, services.store, services.telnyx, actors)

    assert running.unfinalized() == 1
    assert services.store.row(message_id)["status"] == statuses.SENT
    backdate(services.store, message_id, settings.finalize_after_s + 1)
    assert running.unfinalized() == 0  # still sent at Telnyx: nothing moves, and the row is touched
    assert running.unfinalized() == 0
    assert services.store.row(message_id)["updated_at"] > utcnow() - timedelta(seconds=30)


def test_a_message_telnyx_no_longer_keeps_ends_unconfirmed_only_past_retention(quiet_stack):
    settings, _, services, actors, producer = quiet_stack
    young = submitted_without_webhooks(quiet_stack, "young")
    old = submitted_without_webhooks(quiet_stack, "old")
    with services.store.engine.begin() as conn:  # ids Telnyx does not know (any more)
        for message_id in (young, old):
            conn.execute(messages.update().where(messages.c.id == message_id)
                         .values(telnyx_id=f"gone-{message_id}"))
    backdate(services.store, young, settings.finalize_after_s + 1)
    backdate(services.store, old, 11 * 86400, created=True)
    running = Reconciler(settings, services.store, services.telnyx, actors)

    assert running.unfinalized() == 1
    assert producer.status(old)["status"] == statuses.DELIVERY_UNCONFIRMED
    assert producer.status(old)["errors"][-1]["code"] == "not_found"
    assert producer.status(young)["status"] == statuses.SUBMITTED


def test_without_a_telnyx_client_only_stuck_sends_are_handled(quiet_stack, caplog):
    settings, _, services, actors, _ = quiet_stack
    message_id = submitted_without_webhooks(quiet_stack, "no key")
    running = Reconciler(settings, services.store, None, actors)

    assert "TELNYX_API_KEY" in caplog.text
    assert running.unfinalized() == 0
    assert running.tick() == {"resent": 0, "reconciled": 0}
    assert services.store.row(message_id)["status"] == statuses.SUBMITTED


def test_the_scheduler_loop_reconciles_and_reports_its_counts(quiet_stack):
    settings, _, services, actors, producer = quiet_stack
    message_id = submitted_without_webhooks(quiet_stack, "scheduler")
    scheduler = Scheduler(settings.model_copy(update={"scheduler_interval_s": 0.05}), services.store, actors,
                          Reconciler(settings, services.store, services.telnyx, actors))
    counts: list[dict[str, int]] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            counts.append(scheduler.tick())
            stop.wait(0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        wait(lambda: producer.status(message_id)["status"] == statuses.DELIVERED)
        wait(lambda: sum(c["reconciled"] for c in counts) == 1)
    finally:
        stop.set()
        thread.join(5)
        scheduler.reconciler.close()
    assert {"promoted", "requeued", "bulk_requeued", "resent", "reconciled"} <= set(counts[0])


def test_synthetic_events_follow_the_recipients_statuses():
    sent = synthetic_event("t-1", {"id": "t-1", "to": [{"status": "sent"}], "sent_at": "2026-01-01T00:00:00Z"})
    final = synthetic_event("t-1", {"id": "t-1", "to": [{"status": "delivered"}]})
    mixed = synthetic_event("t-1", {"id": "t-1", "to": [{"status": "delivered"}, {"status": "delivery_failed"}]})
    partial = synthetic_event("t-1", {"id": "t-1", "to": [{"status": "delivered"}, {"status": "sent"}]})

    assert synthetic_event("t-1", {"id": "t-1", "to": [{"status": "queued"}]}) is None
    assert (sent["data"]["event_type"], sent["data"]["id"]) == (SENT, "rc:t-1:sent")
    assert (final["data"]["event_type"], final["data"]["id"]) == (FINALIZED, "rc:t-1:delivered")
    assert mixed["data"]["event_type"] == FINALIZED and mixed["data"]["id"].startswith("rc:t-1:mixed-")
    assert partial["data"]["event_type"] == SENT
    long = synthetic_event("x" * 64, {"to": [{"status": "delivery_unconfirmed"}]})
    assert len(long["data"]["id"]) <= 64
