"""Redis (and store) outages outside the worker: enqueues that fail are recorded in the store and sent at the
scheduler's first tick after Redis answers; the scheduler and ``sendq web`` wait out outages, log them once, and
name them in ``/healthz``; ``sendq web`` keeps webhooks in the store while Redis is down.

Redis that goes away is a private ``redis-server`` (tests/chaos_support.py), or a port nothing listens on; the
store is SQLite and, with ``DATABASE_URL``, PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa
from chaos_support import PrivateRedis, process_env

from producers.producer import Producer
from worker import statuses
from worker.actors import Actors
from worker.broker import build_broker
from worker.campaigns.store import Campaigns
from worker.events import apply_events, apply_parked_known
from worker.inbound import Inbound
from worker.scheduler import Scheduler
from worker.serving import ServerThread, free_port
from worker.settings import Settings
from worker.signature import Signer
from worker.store import ENQUEUE_PENDING, NewMessage, Store, events, messages, utcnow
from worker.web import create_app

SIGNER = Signer.from_seed("outage")
TEXT = "secret text 4711"
RECIPIENT = "+13125550177"


def eventually(check: Callable[[], Any], timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; last: {found!r}")
        time.sleep(0.05)


def dead_redis_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def new_message(status: str = statuses.QUEUED, priority: str = "normal", **extra: Any) -> NewMessage:
    return NewMessage(kind="long_code", priority=priority, recipients=[RECIPIENT], endpoint="/messages",
                      body={"to": RECIPIENT, "from": "+13125550001", "text": TEXT}, sender="+13125550001",
                      status=status, **extra)


def job_row(store: Store, message_id: str) -> dict[str, Any]:
    with store.reader.connect() as conn:
        return dict(conn.execute(sa.select(messages.c.job_gen, messages.c.job_due_at, messages.c.status)
                                 .where(messages.c.id == message_id)).mappings().one())


def send_jobs(client: redis.Redis, namespace: str, queue: str = "default") -> list[list[Any]]:
    """The args of the send jobs waiting in ``queue`` (ready or delayed)."""
    found = []
    for key in (f"{namespace}:{queue}.msgs", f"{namespace}:{queue}.DQ.msgs"):
        found += [json.loads(raw)["args"] for raw in client.hvals(key)]
    return found


@pytest.fixture
def down_settings(base_settings: Settings) -> Settings:
    return base_settings.model_copy(update={"redis_url": dead_redis_url()})


@pytest.fixture
def client(base_settings: Settings) -> Iterator[redis.Redis]:
    found = redis.Redis.from_url(base_settings.redis_url or "")
    yield found
    found.close()


# -- the enqueue pending, recorded in the store ------------------------------------------------------------------


def test_a_failed_enqueue_marks_its_job_only(store):
    row, _ = store.insert(new_message())
    store.enqueue_failed([(row["id"], 5)])  # another job's number: the message moved on, left alone
    assert job_row(store, row["id"])["job_due_at"] != ENQUEUE_PENDING

    store.enqueue_failed([(row["id"], 0)])

    assert job_row(store, row["id"])["job_due_at"] == ENQUEUE_PENDING
    # Picked by the scheduler's look for lost jobs at once, first, whatever requeue_after_s is.
    older, _ = store.insert(new_message())
    assert [r["id"] for r in store.lost_jobs(utcnow() - timedelta(seconds=300))] == [row["id"]]
    assert older["id"] not in [r["id"] for r in store.lost_jobs(utcnow() - timedelta(seconds=300))]


def test_submit_with_redis_down_keeps_the_message_logs_one_line_and_the_next_tick_enqueues_it(
        base_settings, down_settings, store, client, caplog):
    down = Producer(down_settings, store, Actors(build_broker(down_settings)))
    with caplog.at_level(logging.INFO):
        result = down.submit(RECIPIENT, from_="+13125550001", text=TEXT)

    assert result["created"] and result["status"] == statuses.QUEUED
    lines = [r for r in caplog.records if r.name.startswith("producers")]
    assert len(lines) == 1 and lines[0].exc_info is None
    text = lines[0].getMessage()
    assert result["id"] in text and "redis unavailable" in text
    assert RECIPIENT not in caplog.text and TEXT not in caplog.text
    assert job_row(store, result["id"])["job_due_at"] == ENQUEUE_PENDING

    # Redis answers: one tick of a scheduler on default settings (requeue_after_s 300) sends it.
    scheduler = Scheduler(base_settings, store, Actors(build_broker(base_settings)))
    assert scheduler.tick()["requeued"] == 1
    row = job_row(store, result["id"])
    assert send_jobs(client, base_settings.namespace) == [[result["id"], row["job_gen"]]]
    assert row["job_due_at"] != ENQUEUE_PENDING
    down.actors.broker.close()
    scheduler.actors.broker.close()


def test_a_failed_hand_over_leaves_the_new_job_pending(down_settings, store):
    row, _ = store.insert(new_message())
    actors = Actors(build_broker(down_settings))

    with pytest.raises(Exception, match="redis unavailable"):
        actors.hand_over(store, row["id"], "normal", after=0)

    found = job_row(store, row["id"])
    assert found["job_gen"] == 1 and found["job_due_at"] == ENQUEUE_PENDING
    actors.broker.close()


def test_promoted_messages_whose_enqueue_failed_are_all_pending(down_settings, store):
    ids = [store.insert(new_message(statuses.SCHEDULED, send_at=utcnow() + timedelta(seconds=1)))[0]["id"]
           for _ in range(3)]
    scheduler = Scheduler(down_settings, store, Actors(build_broker(down_settings)))

    with pytest.raises(Exception, match="redis unavailable"):
        scheduler.promote_due()

    assert [job_row(store, i)["job_due_at"] for i in ids] == [ENQUEUE_PENDING] * 3
    assert {job_row(store, i)["status"] for i in ids} == {statuses.QUEUED}
    scheduler.actors.broker.close()


def test_a_resumed_campaign_whose_enqueue_failed_is_sent_by_the_next_tick(base_settings, down_settings, store,
                                                                       client):
    book = Campaigns(store.engine, store.reader)
    campaign = book.insert(name="c", kind="long_code", endpoint="/messages", body={}, senders=["+13125550001"],
                           messaging_profile_id=None, template="hi", send_at=None, valid_for_s=None, rate_cap=None)
    row, _ = store.insert(new_message(priority="bulk"))
    with store.engine.begin() as conn:
        conn.execute(messages.update().where(messages.c.id == row["id"]).values(campaign_id=campaign["id"]))
    book.pause(campaign["id"])
    down = Producer(down_settings, store, Actors(build_broker(down_settings)))

    with pytest.raises(Exception, match="redis unavailable"):
        down.resume_campaign(campaign["id"])

    assert job_row(store, row["id"])["job_due_at"] == ENQUEUE_PENDING
    scheduler = Scheduler(base_settings, store, Actors(build_broker(base_settings)))
    scheduler.tick()
    assert [args[0] for args in send_jobs(client, base_settings.namespace, "bulk")] == [row["id"]]
    down.actors.broker.close()
    scheduler.actors.broker.close()


# -- the scheduler during outages --------------------------------------------------------------------------------


def test_the_scheduler_waits_out_a_redis_outage_logs_it_twice_and_sends_what_was_stored_meanwhile(
        base_settings, store, tmp_path, caplog):
    server = PrivateRedis(tmp_path).start()
    settings = base_settings.model_copy(update={"redis_url": server.url, "scheduler_interval_s": 0.1})
    producer = Producer(settings, store, Actors(build_broker(settings)))
    scheduler = Scheduler(settings, store, Actors(build_broker(settings)))
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop,), daemon=True)
    try:
        before = producer.send(RECIPIENT, from_="+13125550001", text=TEXT)  # its job dies with Redis
        with caplog.at_level(logging.INFO):
            thread.start()
            eventually(lambda: scheduler._last_tick is not None)
            server.kill()
            during = [producer.send(RECIPIENT, from_="+13125550001", text=TEXT) for _ in range(5)]
            eventually(lambda: not scheduler.dependencies.by_name["redis"].up)
            time.sleep(1.0)  # ten ticks of the outage
            assert scheduler.health()["redis"].startswith("error: unavailable")
            server.start()
            restarted = time.monotonic()
            fresh = redis.Redis.from_url(server.url)
            wanted = {before, *during}
            eventually(lambda: {a[0] for a in send_jobs(fresh, settings.namespace)} >= wanted, 10)
            took = time.monotonic() - restarted
            fresh.close()
        assert took < 3.0, took
        assert scheduler.health()["redis"] == "ok"
        scheduler_lines = [r for r in caplog.records if not r.name.startswith("producers")]
        assert all(r.exc_info is None for r in caplog.records)
        outage_lines = [r.getMessage() for r in scheduler_lines if r.name == "sendq.dependencies"]
        assert len(outage_lines) == 2, outage_lines
        assert len(scheduler_lines) <= 5, [r.getMessage() for r in scheduler_lines]
    finally:
        stop.set()
        thread.join(5)
        producer.actors.broker.close()
        scheduler.actors.broker.close()
        server.stop()


def _healthz(port: int) -> tuple[int, dict[str, str]] | None:
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    except httpx.HTTPError:
        return None
    return answer.status_code, answer.json()


def _start(command: str, settings: Settings, tmp_path, **env: str) -> subprocess.Popen[bytes]:
    environment = process_env(settings) | {"SENDQ_LOG_LEVEL": "INFO", **env}
    log = open(tmp_path / f"{command}.log", "wb")  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", "producers.cli", command, *(["--port", env["PORT"]]
                                                                               if command == "web" else [])],
                            env=environment, stdout=log, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.mark.timeout(90)
def test_sendq_scheduler_started_while_redis_is_down_waits_for_it(base_settings, tmp_path):
    server = PrivateRedis(tmp_path)  # not started yet: its port refuses connections
    settings = base_settings.model_copy(update={"redis_url": server.url})
    port = free_port()
    proc = _start("scheduler", settings, tmp_path, SENDQ_METRICS_PORT=str(port))
    try:
        health = eventually(lambda: _healthz(port), 30)
        time.sleep(3)  # it used to exit after 2 s
        assert proc.poll() is None
        status, checks = _healthz(port) or (0, {})
        assert status == 503 and checks["redis"].startswith("error: unavailable"), health
        assert httpx.get(f"http://127.0.0.1:{port}/livez", timeout=2).status_code == 200  # waiting, not stuck
        server.start()
        eventually(lambda: (_healthz(port) or (0, {}))[0] == 200, 15)
        client = redis.Redis.from_url(server.url)
        assert eventually(lambda: client.get(f"{settings.namespace}:redis-epoch"), 10)  # ticks run
        client.close()
    finally:
        _stop(proc)
        server.stop()
    log = (tmp_path / "scheduler.log").read_text()
    assert log.count("redis is unavailable") == 1 and log.count("redis is available again") == 1
    assert "Traceback" not in log


@pytest.mark.timeout(90)
def test_sendq_scheduler_started_while_the_store_is_down_waits_for_it(base_settings, tmp_path):
    settings = base_settings.model_copy(
        update={"database_url": f"postgresql://postgres@127.0.0.1:{free_port()}/test"})
    port = free_port()
    proc = _start("scheduler", settings, tmp_path, SENDQ_METRICS_PORT=str(port))
    try:
        eventually(lambda: _healthz(port), 30)
        time.sleep(3)
        assert proc.poll() is None
        status, checks = _healthz(port) or (0, {})
        assert status == 503 and checks["store"].startswith("error: unavailable"), checks
        assert checks["redis"] == "ok"
    finally:
        _stop(proc)
    log = (tmp_path / "scheduler.log").read_text()
    assert log.count("store is unavailable") == 1 and "Traceback" not in log


def test_after_redis_lost_its_data_every_queued_message_gets_a_new_job_at_the_next_tick(
        base_settings, store, tmp_path):
    server = PrivateRedis(tmp_path).start()
    settings = base_settings.model_copy(update={"redis_url": server.url})
    producer = Producer(settings, store, Actors(build_broker(settings)))
    scheduler = Scheduler(settings, store, Actors(build_broker(settings)))
    try:
        scheduler.tick()  # the first look remembers Redis's epoch
        ids = [producer.send(RECIPIENT, from_="+13125550001", text=TEXT) for _ in range(3)]
        assert scheduler.tick()["redis_lost"] == 0
        server.kill()
        server.start()  # empty: the three jobs are gone

        counts = scheduler.tick()

        assert counts["redis_lost"] == 3 and counts["requeued"] == 3
        client = redis.Redis.from_url(server.url)
        assert sorted(a[0] for a in send_jobs(client, settings.namespace)) == sorted(ids)
        client.close()
        assert scheduler.tick()["redis_lost"] == 0
    finally:
        producer.actors.broker.close()
        scheduler.actors.broker.close()
        server.stop()


# -- sendq web during outages ------------------------------------------------------------------------------------


def finalized(telnyx_id: str, event_id: str | None = None) -> bytes:
    return json.dumps({"data": {
        "event_type": "message.finalized", "id": event_id or str(uuid.uuid4()), "record_type": "event",
        "occurred_at": "2026-02-15T14:30:04.148+00:00",
        "payload": {"id": telnyx_id, "direction": "outbound",
                    "to": [{"phone_number": RECIPIENT, "status": "delivered"}]},
    }}).encode()


def received(inbound_id: str, text: str = "hello") -> bytes:
    return json.dumps({"data": {
        "event_type": "message.received", "id": str(uuid.uuid4()), "record_type": "event",
        "occurred_at": "2026-02-15T14:30:04.148+00:00",
        "payload": {"id": inbound_id, "direction": "inbound", "messaging_profile_id": "profile-1",
                    "from": {"phone_number": RECIPIENT}, "to": [{"phone_number": "+13125550001"}], "text": text},
    }}).encode()


async def post_all(url: str, bodies: list[bytes]) -> list[httpx.Response]:
    now = int(time.time())
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        return await asyncio.gather(*(http.post("/webhooks/telnyx", content=b, headers=SIGNER.headers(b, now))
                                      for b in bodies))


def kept(store: Store) -> dict[str, Any]:
    with store.reader.connect() as conn:
        return {r["event_id"]: r["applied_at"] for r in conn.execute(sa.select(events.c.event_id,
                                                                               events.c.applied_at)).mappings()}


def submitted_message(store: Store) -> tuple[str, str]:
    row, _ = store.insert(new_message())
    telnyx_id = str(uuid.uuid4())
    store.claim(row["id"])
    store.transition(row["id"], statuses.SUBMITTED, values={"telnyx_id": telnyx_id})
    return row["id"], telnyx_id


def test_web_with_redis_down_keeps_webhooks_in_the_store_and_the_sweep_applies_them_once(
        down_settings, store, caplog):
    settings = down_settings.model_copy(update={"telnyx_public_key": SIGNER.public_key})
    message_id, telnyx_id = submitted_message(store)
    inbound_id = str(uuid.uuid4())
    final = finalized(telnyx_id, "evt-final")
    with caplog.at_level(logging.INFO), ServerThread(create_app(settings)) as web:
        answers = asyncio.run(post_all(web.url, [final, received(inbound_id)]))
        later = [asyncio.run(post_all(web.url, [finalized(str(uuid.uuid4()))])) for _ in range(5)]
        again = asyncio.run(post_all(web.url, [final]))  # Telnyx's redelivery of an event kept already
        health = httpx.get(f"{web.url}/healthz")
        live = httpx.get(f"{web.url}/livez")

    assert [(a.status_code, a.json()["result"]) for a in answers] == [(200, "accepted")] * 2
    assert [a[0].status_code for a in later] == [200] * 5
    assert again[0].json()["result"] == "duplicate"
    assert health.status_code == 503
    assert health.json()["redis"].startswith("error: unavailable") and health.json()["store"] == "ok"
    assert (live.status_code, live.json()) == (200, {"web": "ok"})  # it still takes webhooks: no restart, no eviction
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING][:1] and \
        len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1  # the outage's start, once
    assert kept(store)["evt-final"] is None  # kept, not applied: no worker ran

    # The scheduler's sweep applies the kept events: the outbound one moves its message, the inbound one is recorded.
    assert apply_parked_known(store) == 2
    assert store.row(message_id)["status"] == statuses.DELIVERED
    assert Inbound.of(store).message(inbound_id) is not None
    # A copy that comes through Redis afterwards (a worker's apply_events) applies nothing twice.
    assert apply_events(store, [json.loads(final)]) == ["duplicate"]
    assert apply_parked_known(store) == 0


def test_web_with_redis_and_the_store_down_answers_503(down_settings):
    settings = down_settings.model_copy(update={
        "telnyx_public_key": SIGNER.public_key,
        "database_url": f"postgresql://postgres@127.0.0.1:{free_port()}/test"})
    with ServerThread(create_app(settings)) as web:
        answers = asyncio.run(post_all(web.url, [finalized(str(uuid.uuid4())) for _ in range(3)]))
        health = httpx.get(f"{web.url}/healthz")

    assert [(a.status_code, a.json()["result"]) for a in answers] == [(503, "unavailable")] * 3
    assert health.status_code == 503
    assert set(health.json()) == {"redis", "store"}
    assert all(v.startswith("error: unavailable") for v in health.json().values())


def test_web_goes_back_to_redis_when_it_answers(base_settings, store, tmp_path):
    server = PrivateRedis(tmp_path).start()
    settings = base_settings.model_copy(update={"redis_url": server.url, "telnyx_public_key": SIGNER.public_key})
    try:
        with ServerThread(create_app(settings)) as web:
            server.kill()
            [down] = asyncio.run(post_all(web.url, [finalized(str(uuid.uuid4()), "evt-down")]))
            server.start()
            time.sleep(0.6)  # REDIS_RETRY_S: the next batch tries Redis again
            [up] = asyncio.run(post_all(web.url, [finalized(str(uuid.uuid4()), "evt-up")]))
            health = httpx.get(f"{web.url}/healthz")
        assert (down.status_code, up.status_code) == (200, 200)
        assert "evt-down" in kept(store) and "evt-up" not in kept(store)  # the second went through Redis
        client = redis.Redis.from_url(server.url)
        assert client.hlen(f"{settings.namespace}:events.msgs") == 1
        client.close()
        assert health.status_code == 200
    finally:
        server.stop()


@pytest.mark.timeout(90)
def test_sendq_web_starts_while_the_store_is_down_and_accepts_webhooks_through_redis(base_settings, tmp_path,
                                                                                      client):
    port = free_port()
    settings = base_settings.model_copy(update={
        "telnyx_public_key": SIGNER.public_key,
        "database_url": f"postgresql://postgres@127.0.0.1:{free_port()}/test"})
    proc = _start("web", settings, tmp_path, PORT=str(port))
    try:
        eventually(lambda: _healthz(port), 30)
        status, checks = _healthz(port) or (0, {})
        assert status == 503 and checks["store"].startswith("error: unavailable") and checks["redis"] == "ok"
        [answer] = asyncio.run(post_all(f"http://127.0.0.1:{port}", [finalized(str(uuid.uuid4()))]))
        assert answer.status_code == 200
        assert client.hlen(f"{settings.namespace}:events.msgs") == 1
        assert proc.poll() is None
    finally:
        _stop(proc)
    assert "Traceback" not in (tmp_path / "web.log").read_text()


def test_inbound_events_kept_by_web_are_applied_by_the_scheduler_tick(base_settings, store):
    from worker.events import keep_events

    inbound_id = str(uuid.uuid4())
    assert keep_events(store, [json.loads(received(inbound_id, "STOP"))]) == [True]
    scheduler = Scheduler(base_settings, store, Actors(build_broker(base_settings)))

    assert scheduler.tick()["parked_applied"] == 1
    assert Inbound.of(store).message(inbound_id)["keyword"] == "stop"
    scheduler.actors.broker.close()

