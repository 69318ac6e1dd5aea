"""Issue 14: a job that meets a store or Redis outage waits for it and runs again, spending no retry and
dead-lettering nothing; the outage is logged when it starts and when it ends, not once per failed job.

The outages are real: the worker reaches PostgreSQL or Redis through a TCP proxy that the test cuts (every
connection dropped, new ones closed at once) and restores, in front of the machine's services."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from tcp_proxy import TcpProxy

from producers.producer import Producer
from worker import job_logs, statuses
from worker.actors import Actors
from worker.broker import build_broker
from worker.dead_letters import DeadLetters
from worker.dependencies import Dependencies, unavailable
from worker.errors import RedisUnavailable, StoreUnavailable
from worker.pool import start_worker
from worker.queues import QUEUES
from worker.services import Services
from worker.settings import Settings
from worker.store import Store


def _through(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"redis://127.0.0.1:{proxy.port}/0"
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


def _proxy_for(url: str) -> TcpProxy:
    parts = urlsplit(url)
    return TcpProxy(parts.path if parts.scheme == "unix" else (parts.hostname or "127.0.0.1", parts.port or 0))


@contextmanager
def _worker(settings: Settings) -> Iterator[tuple[Services, Dependencies]]:
    """A worker as ``sendq worker`` builds its children: dependencies probed, jobs that meet an outage held."""
    store = Store.from_url(settings.database_url)
    holder: list[redis.Redis] = []
    dependencies = Dependencies.of(store=store.ping, redis=lambda: holder[0].ping())
    broker = build_broker(settings, dependencies=dependencies)
    holder.append(broker.client)
    job_logs.install(dependencies, QUEUES)
    services = Services.build(settings, broker=broker, store=store)
    worker = start_worker(Actors(broker, services), threads=4, idle_poll_ms=50)
    try:
        yield services, dependencies
    finally:
        worker.stop()
        broker.close()
        services.close()
        job_logs.install(None, QUEUES)


def _wait_submitted(store: Store, ids: list[str], timeout_s: float = 30) -> None:
    """Until Telnyx accepted every message (no webhook receiver runs here: ``submitted`` is as far as they go)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [store.row(i)["status"] for i in ids]
        if all(s == statuses.SUBMITTED for s in found):
            return
        assert time.monotonic() < deadline, found
        time.sleep(0.05)


def _wait_down(dependencies: Dependencies, name: str) -> None:
    deadline = time.monotonic() + 10
    while dependencies.by_name[name].up:
        assert time.monotonic() < deadline, "the worker never met the outage"
        time.sleep(0.05)


# Without the outage handling, one retry at 50-200 ms backoff would dead-letter every job of a 3 s outage.
FRAGILE = {"send_max_retries": 1, "send_min_backoff_ms": 50, "send_max_backoff_ms": 200}


def test_sends_that_meet_a_store_outage_wait_for_it_and_spend_no_retry(base_settings, simulator, caplog):
    if not base_settings.database_url.startswith("postgresql"):
        pytest.skip("cuts a PostgreSQL connection; SQLite has none")
    proxy = _proxy_for(base_settings.database_url)
    settings = base_settings.model_copy(update={
        "database_url": _through(base_settings.database_url, proxy), "telnyx_base_url": f"{simulator.url}/v2",
        **FRAGILE})
    direct = Store.from_url(base_settings.database_url)
    producer = Producer(settings, direct, Actors(build_broker(settings)))
    caplog.set_level(logging.INFO)
    try:
        with _worker(settings) as (_services, dependencies):
            proxy.cut()
            ids = [producer.send(f"+1312556{i:04d}", from_="+13125550001", text=f"outage {i}") for i in range(20)]
            _wait_down(dependencies, "store")
            time.sleep(3)  # several backoffs' worth: each job would have been retried and dead-lettered by now
            assert all(direct.row(i)["status"] == statuses.QUEUED for i in ids)
            proxy.restore()
            _wait_submitted(direct, ids)
            assert dependencies.health() == {"store": "ok", "redis": "ok"}
            attempts = {direct.row(i)["attempts"] for i in ids}
        dead = DeadLetters(producer.actors.broker, direct).list()
    finally:
        producer.actors.broker.close()
        direct.close()
        proxy.close()
    assert dead == []
    assert attempts == {1}
    assert len(simulator.state.messages) == 20  # each sent once
    outage_lines = [r for r in caplog.records if r.name == "sendq.dependencies"]
    assert [r.getMessage().split(" is ")[1].split(" ")[0] for r in outage_lines] == ["unavailable", "available"]
    assert not [r for r in caplog.records if r.name.startswith("dramatiq") and r.levelno >= logging.WARNING]


def test_sends_that_meet_a_redis_outage_wait_for_it_and_spend_no_retry(base_settings, simulator, caplog):
    proxy = _proxy_for(base_settings.redis_url or "")
    settings = base_settings.model_copy(update={
        "redis_url": _through(base_settings.redis_url or "", proxy), "telnyx_base_url": f"{simulator.url}/v2",
        **FRAGILE})
    direct = Store.from_url(settings.database_url)
    producer = Producer(base_settings, direct, Actors(build_broker(base_settings)))
    caplog.set_level(logging.INFO)
    try:
        with _worker(settings) as (_services, dependencies):
            first = [producer.send(f"+1312556{i:04d}", from_="+13125550001", text=f"before {i}") for i in range(10)]
            _wait_submitted(direct, first)
            proxy.cut()
            ids = [producer.send(f"+1312557{i:04d}", from_="+13125550001", text=f"during {i}") for i in range(20)]
            _wait_down(dependencies, "redis")
            time.sleep(3)
            proxy.restore()
            _wait_submitted(direct, ids)
        dead = DeadLetters(producer.actors.broker, direct).list()
    finally:
        producer.actors.broker.close()
        direct.close()
        proxy.close()
    assert dead == []
    assert len(simulator.state.messages) == 30
    outage_lines = [r.getMessage() for r in caplog.records if r.name == "sendq.dependencies"]
    assert 2 <= len(outage_lines) <= 4, outage_lines  # the outage's start and end (the store is never down)
    assert all(line.startswith("redis ") for line in outage_lines), outage_lines
    noisy = [r.getMessage() for r in caplog.records if r.name.startswith("dramatiq") and r.levelno >= logging.WARNING]
    assert len(noisy) <= 2, noisy


@pytest.mark.parametrize(("error", "kind"), [
    (redis.exceptions.ConnectionError("Connection refused"), RedisUnavailable),
    (redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"), RedisUnavailable),
    (redis.exceptions.TimeoutError("Timeout reading from socket"), RedisUnavailable),
    (StoreUnavailable("server closed the connection unexpectedly"), StoreUnavailable),
])
def test_outages_are_told_from_failures(error, kind):
    found = unavailable(error)
    assert isinstance(found, kind)
    try:
        try:
            raise error
        except Exception as inner:
            raise RuntimeError("while sending") from inner
    except RuntimeError as outer:
        assert isinstance(unavailable(outer), kind)  # found through the chain too
    assert unavailable(ValueError("bad")) is None
    assert unavailable(redis.exceptions.ResponseError("WRONGTYPE")) is None
