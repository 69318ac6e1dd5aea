"""The scheduler finds messages whose job was lost and enqueues them again."""

from __future__ import annotations

from datetime import timedelta

from worker import statuses
from worker.scheduler import Scheduler
from worker.store import NewMessage, messages, utcnow


def test_a_queued_message_without_a_job_is_re_enqueued_and_delivered(stack):
    row, _ = stack.services.store.insert(NewMessage(
        kind="long_code", priority="normal", recipients=["+13125550002"], endpoint="/messages", sender="+13125550001",
        body={"to": "+13125550002", "from": "+13125550001", "text": "lost job",
              "webhook_url": stack.settings.webhook_url},
    ))
    with stack.services.store.engine.begin() as conn:  # as if Redis had lost the job ten minutes ago
        conn.execute(messages.update().where(messages.c.id == row["id"])
                     .values(updated_at=utcnow() - timedelta(minutes=10)))
    scheduler = Scheduler(stack.settings, stack.services.store, stack.actors)

    assert scheduler.requeue_lost() == 1
    assert scheduler.requeue_lost() == 0  # touched: not picked again while its new job runs
    assert stack.wait_final(row["id"])["status"] == statuses.DELIVERED


def test_a_fresh_queued_message_is_left_to_its_job(stack):
    stack.services.store.insert(NewMessage(
        kind="long_code", priority="normal", recipients=["+13125550002"], endpoint="/messages",
        body={"to": "+13125550002", "from": "+13125550001", "text": "fresh"},
    ))

    assert Scheduler(stack.settings, stack.services.store, stack.actors).requeue_lost() == 0
