"""Bulk messaging-profile updates: validation, chunked orders polled to completion, restarts and the CLI.

Everything runs for real: the simulator over HTTP (its orders settle over successive polls and really move
numbers), dramatiq workers on Redis, and the SQL store on every backend.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from producers.producer import Producer
from worker.actors import Actors
from worker.broker import build_broker
from worker.bulk_updates import BulkUpdates, bulk_updates, check_request, run_bulk_update
from worker.errors import NotFoundError, ValidationError
from worker.pool import start_worker
from worker.scheduler import Scheduler
from worker.services import Services
from worker.settings import Settings
from worker.simulator import inventory
from worker.simulator.app import POOL_NUMBERS
from worker.simulator.profiles import SECOND_PROFILE_ID
from worker.store import utcnow

MAIN, SPARE, TOLL_FREE = inventory.MAIN_NUMBER, inventory.SPARE_NUMBER, inventory.TOLL_FREE
MOBILE, HOSTED = inventory.MOBILE_NUMBER, inventory.HOSTED_NUMBER
OWNED = [MAIN, *POOL_NUMBERS, SPARE, TOLL_FREE, MOBILE, HOSTED]
NOBODYS = ["+19995550101", "+19995550102", "+19995550103", "+19995550104"]  # E.164, not on the account
SENDQ = [sys.executable, "-m", "producers.cli"]


@pytest.fixture
def settings(base_settings: Settings, simulator) -> Settings:
    return base_settings.model_copy(update={"telnyx_base_url": f"{simulator.url}/v2", "bulk_chunk_size": 2})


@pytest.fixture
def producer(settings: Settings, store) -> Iterator[Producer]:
    actors = Actors(build_broker(settings))
    yield Producer(settings, store, actors)
    actors.broker.close()


@pytest.fixture
def book(simulator) -> inventory.NumberBook:
    return inventory.book(simulator)


@contextmanager
def running_worker(settings: Settings) -> Iterator[Services]:
    """A dramatiq worker with its own broker and services, as one ``sendq worker`` process would have."""
    services = Services.build(settings)
    actors = Actors(build_broker(settings), services)
    worker = start_worker(actors, threads=2, idle_poll_ms=50)
    try:
        yield services
    finally:
        worker.stop()
        actors.broker.close()
        services.close()


def wait_for(producer: Producer, bulk_id: str, predicate: Callable[[dict[str, Any]], bool],
             timeout_s: float = 30.0, seen: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        record = producer.bulk_status(bulk_id)
        if seen is not None:
            seen.append(record)
        if predicate(record):
            return record
        assert time.monotonic() < deadline, f"timed out; last record: {record}"
        time.sleep(0.05)


def completed(record: dict[str, Any]) -> bool:
    return record["status"] == "completed"


def stored(store) -> list[Any]:
    with store.engine.connect() as conn:
        return conn.execute(bulk_updates.select()).all()


# -- validation -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("profile", "numbers", "assign_only", "field"), [
    ("not-a-uuid", [MAIN], False, "profile"),
    (SECOND_PROFILE_ID.replace("-", ""), [MAIN], False, "profile"),
    (None, [MAIN], False, "profile"),
    (SECOND_PROFILE_ID, [], False, "numbers"),
    (SECOND_PROFILE_ID, [MAIN, "3125550002"], False, "numbers"),
    (SECOND_PROFILE_ID, ["+0123456"], False, "numbers"),
    (SECOND_PROFILE_ID, [MAIN], "yes", "assign_only"),
])
def test_bad_input_is_refused_naming_the_field_with_nothing_stored_or_enqueued(producer, store, settings, profile,
                                                                               numbers, assign_only, field):
    with pytest.raises(ValidationError) as refused:
        producer.bulk_update(profile, numbers, assign_only=assign_only)

    assert refused.value.field == field
    assert stored(store) == []
    assert list(redis.Redis.from_url(settings.redis_url).scan_iter(f"{settings.namespace}*")) == []


def test_duplicates_are_dropped_and_an_empty_profile_unassigns():
    assert check_request("", [MAIN, SPARE, MAIN]) == ("", [MAIN, SPARE], False)
    assert check_request(SECOND_PROFILE_ID, MAIN, True) == (SECOND_PROFILE_ID, [MAIN], True)


# -- the job ----------------------------------------------------------------------------------------------

def test_an_update_is_polled_through_pending_to_completed_and_really_moves_the_numbers(stack):
    inventory.book(stack.simulator).bulk_batch, inventory.book(stack.simulator).bulk_interval_s = 1, 3600.0
    accepted = stack.producer.bulk_update(SECOND_PROFILE_ID, [MAIN, SPARE, NOBODYS[0], MAIN])
    assert accepted["status"] == "queued"

    seen: list[dict[str, Any]] = []
    done = wait_for(stack.producer, accepted["id"], completed, seen=seen)

    assert any(r["status"] == "submitted" and r["pending"] for r in seen)
    assert (done["success"], done["pending"], done["failed_numbers"]) == ([MAIN, SPARE], [], [NOBODYS[0]])
    assert done["order_ids"] == [done["order_id"]] and done["polls"] == 2 and done["errors"] == []
    for number in (MAIN, SPARE):
        assert stack.services.telnyx.numbers.retrieve(number)["messaging_profile_id"] == SECOND_PROFILE_ID


def test_numbers_nobody_owns_all_fail_and_the_update_still_completes(stack):
    accepted = stack.producer.bulk_update("", NOBODYS[:2])

    done = wait_for(stack.producer, accepted["id"], completed)

    assert (done["success"], done["pending"], done["failed_numbers"]) == ([], [], NOBODYS[:2])
    assert done["polls"] == 0  # nothing was pending after the POST


def test_long_lists_are_split_into_orders_of_the_chunk_size(producer, settings, book):
    numbers = [*OWNED, *NOBODYS]
    with running_worker(settings.model_copy(update={"bulk_chunk_size": 1})):
        done = wait_for(producer, producer.bulk_update(SECOND_PROFILE_ID, numbers, assign_only=True)["id"], completed)

    orders = book.orders()
    assert [o["numbers"] for o in orders] == [[n] for n in numbers]  # more chunks than one job posts
    assert done["order_ids"] == [o["order_id"] for o in orders]
    assert (done["success"], done["failed_numbers"]) == (OWNED, NOBODYS)
    assert book.count_on(SECOND_PROFILE_ID) == len(OWNED)


def test_a_refused_request_marks_the_update_failed_with_telnyxs_error(producer, settings):
    unknown_profile = "00000000-0000-4000-8000-000000000000"
    with running_worker(settings):
        done = wait_for(producer, producer.bulk_update(unknown_profile, [MAIN])["id"],
                        lambda r: r["status"] == "failed")

    assert done["order_ids"] == [] and done["pending"] == [MAIN]
    assert done["errors"][0]["code"] == "10005"


def test_a_duplicate_job_before_the_next_poll_is_due_does_nothing(settings, store, book):
    book.bulk_batch, book.bulk_interval_s = 1, 3600.0
    bulk_id = BulkUpdates(store.engine).insert(SECOND_PROFILE_ID, [MAIN, SPARE], False)["id"]
    services = Services.build(settings, store=store)

    assert run_bulk_update(services, bulk_id) == 1.0  # posted; first poll in a second
    assert run_bulk_update(services, bulk_id) is None  # a duplicate: not due, no request
    assert [o["polls"] for o in book.orders()] == [0]
    time.sleep(1.0)
    assert run_bulk_update(services, bulk_id) == 2.0  # polled once, next poll in two seconds
    assert [o["polls"] for o in book.orders()] == [1]
    services.telnyx.close()


def test_a_restart_mid_poll_completes_without_posting_any_chunk_twice(producer, settings, book):
    book.bulk_batch, book.bulk_interval_s = 1, 3600.0  # one number per poll: several polls to go
    numbers = [MAIN, SPARE, TOLL_FREE, NOBODYS[0]]
    with running_worker(settings):
        bulk_id = producer.bulk_update(SECOND_PROFILE_ID, numbers)["id"]
        midway = wait_for(producer, bulk_id, lambda r: r["status"] == "submitted" and r["polls"] >= 1)
    assert midway["pending"] and len(midway["order_ids"]) == 2

    with running_worker(settings):  # a new process: new broker, new services, same store and Redis
        done = wait_for(producer, bulk_id, completed)

    orders = book.orders()
    assert [o["numbers"] for o in orders] == [[MAIN, SPARE], [TOLL_FREE, NOBODYS[0]]]
    assert done["order_ids"] == [o["order_id"] for o in orders]
    assert (done["success"], done["failed_numbers"]) == ([MAIN, SPARE, TOLL_FREE], [NOBODYS[0]])


def test_the_scheduler_re_enqueues_an_update_whose_job_was_lost(stack):
    updates = BulkUpdates(stack.services.store.engine)
    bulk_id = updates.insert(SECOND_PROFILE_ID, [SPARE], False)["id"]  # stored, never enqueued
    with stack.services.store.engine.begin() as conn:
        conn.execute(bulk_updates.update().where(bulk_updates.c.id == bulk_id)
                     .values(updated_at=utcnow() - timedelta(minutes=10)))
    scheduler = Scheduler(stack.settings, stack.services.store, stack.actors)

    assert scheduler._requeue_bulk_updates() == 1
    assert scheduler._requeue_bulk_updates() == 0  # touched: left to its new job
    assert wait_for(stack.producer, bulk_id, completed)["success"] == [SPARE]


def test_an_unknown_id_is_not_found(producer):
    with pytest.raises(NotFoundError):
        producer.bulk_status("no-such-id")


# -- the command line ------------------------------------------------------------------------------------

@pytest.fixture
def env(stack) -> dict[str, str]:
    settings = stack.settings
    return {**os.environ, "REDIS_URL": settings.redis_url, "DATABASE_URL": settings.database_url,
            "SENDQ_NAMESPACE": settings.namespace, "TELNYX_API_KEY": "KEY-cli-test",
            "TELNYX_BASE_URL": settings.telnyx_base_url}


def sendq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SENDQ, *args], env=env, capture_output=True, text=True, timeout=60)


def test_cli_bulk_update_then_status(stack, env):
    accepted = sendq("bulk-update", "--profile", SECOND_PROFILE_ID, "--numbers", f"{SPARE},{NOBODYS[0]}", "--json",
                     env=env)
    assert accepted.returncode == 0, accepted.stderr
    answer = json.loads(accepted.stdout)
    assert set(answer) == {"id", "status"} and answer["status"] == "queued"
    wait_for(stack.producer, answer["id"], completed)

    shown = sendq("status", answer["id"], "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert (record["status"], record["success"], record["failed_numbers"]) == ("completed", [SPARE], [NOBODYS[0]])
    assert record["order_id"] == record["order_ids"][0]
    text = sendq("status", answer["id"], env=env)
    assert text.returncode == 0 and "completed" in text.stdout and SPARE in text.stdout


def test_bulk_update_has_help():
    done = subprocess.run([*SENDQ, "bulk-update", "--help"], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0 and "--assign-only" in done.stdout


@pytest.mark.parametrize(("args", "field"), [
    (["--profile", "nope", "--numbers", MAIN], "profile"),
    (["--profile", SECOND_PROFILE_ID, "--numbers", f"{MAIN},3125550002"], "numbers"),
    (["--profile", SECOND_PROFILE_ID, "--numbers", ","], "numbers"),
])
def test_cli_bad_input_exits_2_naming_the_field(stack, env, args, field):
    done = sendq("bulk-update", *args, "--json", env=env)

    assert done.returncode == 2
    assert field in done.stderr and done.stdout == ""
    assert stored(stack.services.store) == []


def test_status_of_an_id_that_is_neither_exits_1(stack, env):
    done = sendq("status", "no-such-id", "--json", env=env)

    assert done.returncode == 1 and "no-such-id" in done.stderr
    with stack.services.store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(bulk_updates)).scalar() == 0
