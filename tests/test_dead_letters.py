"""Dead letters: jobs dramatiq gave up on are listed, replayed only when that cannot repeat an outcome, and
purged; through the Python API and the ``sendq dlq`` commands. Real worker, Redis, store and simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from worker import statuses
from worker.dead_letters import DeadLetters
from worker.errors import NotFoundError
from worker.simulator.faults import FaultConfig
from worker.store import NewMessage

SENDQ = [sys.executable, "-m", "producers.cli"]
FROM, TO = "+13125550001", "+13125550002"


@pytest.fixture
def base_settings(base_settings):
    # No job retries: the first failure that is not a refusal exhausts them.
    return base_settings.model_copy(update={"send_max_retries": 0})


@pytest.fixture
def dlq(stack):
    return DeadLetters(stack.actors.broker, stack.services.store)


def wait_dead(dlq: DeadLetters, count: int, timeout_s: float = 20.0) -> list:
    deadline = time.monotonic() + timeout_s
    while len(found := dlq.list()) < count:
        assert time.monotonic() < deadline, f"dead letters: {found}"
        time.sleep(0.05)
    return found


def failed_for_good(stack) -> str:
    """A message whose every attempt met a 503: retries exhausted, so `failed`, its job dead."""
    stack.simulator.faults.configure(FaultConfig(fail_5xx=1.0))
    try:
        message_id = stack.producer.send(TO, from_=FROM, text="doomed")
        assert stack.wait_final(message_id)["status"] == statuses.FAILED
    finally:
        stack.simulator.faults.configure(FaultConfig())
    return message_id


def died_before_its_claim(stack) -> str:
    """A `queued` message whose job died without running (here: dramatiq's age limit, as for a job that sat in a
    delay queue too long); the row is untouched."""
    row, _ = stack.services.store.insert(NewMessage(
        kind="long_code", priority="normal", recipients=[TO], endpoint="/messages", sender=FROM,
        body={"to": TO, "from": FROM, "text": "stale job", "webhook_url": stack.settings.webhook_url}))
    job = stack.actors.send_message.message_with_options(args=(row["id"],), max_age=300)
    stack.actors.broker.enqueue(job, delay=600)
    return row["id"]


def test_exhausted_retries_leave_the_message_failed_and_its_job_dead(stack, dlq):
    message_id = failed_for_good(stack)
    [entry] = wait_dead(dlq, 1)

    assert (entry.queue, entry.actor, entry.message_id, entry.status) == ("default", "send_message", message_id,
                                                                          statuses.FAILED)
    assert entry.last_error["code"] == "10007"
    assert entry.failed_at.tzinfo is not None
    record = stack.producer.status(message_id)
    assert record["errors"] and all(e["code"] == "10007" for e in record["errors"])

    [refused] = dlq.replay(message_id)
    assert not refused.replayed and "final" in refused.reason
    assert len(dlq.list()) == 1  # still there: purge removes it
    assert dlq.purge() == 1
    assert dlq.list() == []
    assert stack.producer.status(message_id)["status"] == statuses.FAILED
    assert stack.sim_messages() == []


def test_a_job_that_died_before_its_claim_is_replayed_once_and_delivered(stack, dlq):
    message_id = died_before_its_claim(stack)
    [entry] = wait_dead(dlq, 1)
    assert (entry.message_id, entry.status) == (message_id, statuses.QUEUED)

    [replayed] = dlq.replay(entry.dramatiq_id)

    assert replayed.replayed
    assert stack.wait_final(message_id)["status"] == statuses.DELIVERED
    assert dlq.list() == []
    with pytest.raises(NotFoundError):
        dlq.replay(message_id)
    assert len(stack.sim_messages()) == 1


def sendq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SENDQ, *args], env=env, capture_output=True, text=True, timeout=60)


def test_the_dlq_commands_list_replay_and_purge(stack, dlq):
    env = {**os.environ, "REDIS_URL": stack.settings.redis_url, "DATABASE_URL": stack.settings.database_url,
           "SENDQ_NAMESPACE": stack.settings.namespace, "TELNYX_API_KEY": "KEY-cli-test"}
    failed = failed_for_good(stack)
    waiting = died_before_its_claim(stack)
    wait_dead(dlq, 2)

    listed = sendq("dlq", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    shown = json.loads(listed.stdout)
    assert shown["count"] == 2
    assert {(e["message_id"], e["status"]) for e in shown["data"]} == {(failed, "failed"), (waiting, "queued")}
    assert waiting in sendq("dlq", "list", env=env).stdout

    refused = sendq("dlq", "replay", failed, "--json", env=env)
    assert refused.returncode == 1
    assert "final" in refused.stderr and refused.stdout == ""
    assert sendq("dlq", "replay", "--json", env=env).returncode == 2  # neither an ID nor --all

    replayed = sendq("dlq", "replay", "--all", "--json", env=env)
    assert replayed.returncode == 0, replayed.stderr
    answer = json.loads(replayed.stdout)
    assert answer["replayed"] == [waiting]
    assert [(s["id"], s["status"]) for s in answer["skipped"]] == [(failed, "failed")]
    assert stack.wait_final(waiting)["status"] == statuses.DELIVERED

    purged = sendq("dlq", "purge", "--json", env=env)
    assert purged.returncode == 0, purged.stderr
    assert json.loads(purged.stdout) == {"purged": 1}
    assert json.loads(sendq("dlq", "list", "--json", env=env).stdout)["count"] == 0


def test_a_dead_batch_of_events_is_replayed_and_applied(stack, dlq):
    """A batch job that died (here: past its age limit in the delay queue, as one sitting out a store outage
    too long would) is replayable: its events are applied once, whatever was applied before."""
    message_id = stack.producer.send(TO, from_=FROM, text="batched")
    record = stack.wait_final(message_id)
    finalized = {"data": {"id": "evt-replayed", "event_type": "message.finalized",
                          "occurred_at": "2026-01-01T00:00:00+00:00",
                          "payload": {"id": record["telnyx_id"], "to": [{"phone_number": TO, "status": "delivered"}]}}}
    job = stack.actors.apply_events.message_with_options(args=([finalized],), max_age=300)
    stack.actors.broker.enqueue(job, delay=600)
    [dead] = wait_dead(dlq, 1)

    [replayed] = dlq.replay(dead.dramatiq_id)

    assert replayed.replayed, replayed.reason
    stack.actors.broker.join("events", timeout=10_000)
    assert dlq.list() == []
    assert stack.producer.status(message_id)["status"] == statuses.DELIVERED
