"""The scheduler finds messages whose job was lost and enqueues them again."""

from __future__ import annotations

from datetime import timedelta

from worker import statuses
from worker.scheduler import Scheduler
from worker.sending import SKIPPED, send_one
from worker.store import NewMessage, messages, utcnow


def test_a_queued_message_without_a_job_is_re_enqueued_and_delivered(stack):
    row, _ = stack.services.store.insert(NewMessage(
        kind="long_code", priority="normal", recipients=["+13125550002"], endpoint="/messages", sender="+13125550001",
        body={"to": "+13125550002", "from": "+13125550001", "text": "lost job",
              "webhook_url": stack.settings.webhook_url},
    ))
    _overdue(stack, row["id"], minutes=10)  # as if Redis had lost the job ten minutes ago
    scheduler = Scheduler(stack.settings, stack.services.store, stack.actors)

    assert scheduler.requeue_lost() == 1
    assert scheduler.requeue_lost() == 0  # handed over: not picked again while its new job runs
    assert stack.wait_final(row["id"])["status"] == statuses.DELIVERED


def _overdue(stack, message_id: str, *, minutes: int) -> None:
    with stack.services.store.engine.begin() as conn:
        conn.execute(messages.update().where(messages.c.id == message_id)
                     .values(job_due_at=utcnow() - timedelta(minutes=minutes)))


def _queued(stack, text: str) -> dict:
    row, _ = stack.services.store.insert(NewMessage(
        kind="long_code", priority="normal", recipients=["+13125550002"], endpoint="/messages", sender="+13125550001",
        body={"to": "+13125550002", "from": "+13125550001", "text": text, "webhook_url": stack.settings.webhook_url},
    ))
    return row


def test_a_message_waiting_for_a_far_rate_slot_is_not_taken_for_lost(stack):
    """A deferral hands the message to a job due later; until that is overdue, the message is not lost."""
    store = stack.services.store
    row = _queued(stack, "deferred")
    with store.engine.begin() as conn:  # untouched for an hour, as a long backlog's message would be
        conn.execute(messages.update().where(messages.c.id == row["id"])
                     .values(updated_at=utcnow() - timedelta(hours=1)))
    assert store.next_job(row["id"], after=0, due_at=utcnow() + timedelta(minutes=30)) == 1

    assert Scheduler(stack.settings, store, stack.actors).requeue_lost() == 0


def test_a_superseded_job_stops_before_it_takes_a_rate_slot(stack):
    """The job the scheduler gave up for lost turns up after all: it finds its message handed over and stops
    without reserving a slot; only the job that owns the message sends it."""
    store, limiter = stack.services.store, stack.services.limiter
    row = _queued(stack, "superseded")
    assert store.next_job(row["id"], after=0, due_at=utcnow()) == 1  # handed over; no job enqueued here
    before = limiter.client.keys(f"{stack.settings.namespace}:rl:*")

    assert send_one(stack.services, row["id"], generation=0, last_try=False) == SKIPPED
    assert store.row(row["id"])["status"] == statuses.QUEUED and store.row(row["id"])["attempts"] == 0
    assert limiter.client.keys(f"{stack.settings.namespace}:rl:*") == before
    assert send_one(stack.services, row["id"], generation=1, last_try=False) == statuses.SUBMITTED
    assert stack.wait_final(row["id"])["status"] == statuses.DELIVERED
    assert len(stack.simulator.state.messages) == 1


def test_only_one_of_two_hand_overs_from_the_same_job_wins(stack):
    store = stack.services.store
    row = _queued(stack, "raced")
    assert store.next_job(row["id"], after=0, due_at=utcnow()) == 1
    assert store.next_job(row["id"], after=0, due_at=utcnow()) is None
    store.transition(row["id"], statuses.CANCELLED, from_=[statuses.QUEUED])
    assert store.next_job(row["id"], after=None, due_at=utcnow()) is None  # not queued: no job at all


def test_a_fresh_queued_message_is_left_to_its_job(stack):
    stack.services.store.insert(NewMessage(
        kind="long_code", priority="normal", recipients=["+13125550002"], endpoint="/messages",
        body={"to": "+13125550002", "from": "+13125550001", "text": "fresh"},
    ))

    assert Scheduler(stack.settings, stack.services.store, stack.actors).requeue_lost() == 0


def test_a_job_redelivered_after_its_worker_died_mid_send_resumes_at_once(stack):
    """The worker that claimed the message died (here: the claim is made and nothing else); the broker delivers
    the same job again. It takes the send over with the same Idempotency-Key instead of leaving the message
    ``sending`` until the lease runs out; a duplicate job of the same generation does not."""
    store = stack.services.store
    row = _queued(stack, "resumed")
    assert store.claim(row["id"], 0, job="job-1") is not None  # the lost worker's claim

    assert send_one(stack.services, row["id"], generation=0, job="job-2", last_try=False) == SKIPPED  # a duplicate
    assert send_one(stack.services, row["id"], generation=0, job="job-1", last_try=False) == statuses.SUBMITTED
    record = stack.wait_final(row["id"])
    assert record["status"] == statuses.DELIVERED and record["attempts"] == 2
    assert [e["code"] for e in record["errors"]] == ["ambiguous"]
    assert [h["status"] for h in record["history"]] == ["queued", "sending", "submitted", "sent", "delivered"]


def test_a_resumed_send_racing_a_live_worker_makes_one_message(stack):
    """Both jobs post with the same Idempotency-Key: Telnyx (the simulator) answers the second with the first's
    message, and only one of them records it."""
    store = stack.services.store
    row = _queued(stack, "raced twice")
    claimed = store.claim(row["id"], 0, job="job-1")
    assert claimed is not None
    first = stack.services.telnyx.messages.send(claimed["endpoint"], claimed["body"], idempotency_key=row["id"])

    assert send_one(stack.services, row["id"], generation=0, job="job-1", last_try=False) == statuses.SUBMITTED
    assert stack.wait_final(row["id"])["telnyx_id"] == str(first["id"])
    assert len(stack.simulator.state.messages) == 1


def test_a_job_superseded_while_its_message_is_sending_does_not_resume(stack):
    store = stack.services.store
    row = _queued(stack, "taken back")
    assert store.claim(row["id"], 0, job="job-1") is not None
    assert store.transition(row["id"], statuses.QUEUED, from_=[statuses.SENDING])  # the lease gave it back
    assert store.next_job(row["id"], after=None, due_at=utcnow()) == 1
    assert store.claim(row["id"], 1, job="job-2") is not None  # the new job's claim

    assert send_one(stack.services, row["id"], generation=0, job="job-1", last_try=False) == SKIPPED
    assert stack.simulator.state.messages == {}
