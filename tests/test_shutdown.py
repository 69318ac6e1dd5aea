"""SIGTERM to ``sendq worker`` loses nothing: sends in flight finish and are recorded, prefetched jobs go back to
Redis at once (not after the heartbeat timeout), and a new worker sends the rest, each message exactly once.

The worker is a real ``sendq worker`` process signalled the way Kubernetes and ``docker stop`` do it: SIGTERM to
the supervisor only. Telnyx (the simulator) answers after 0.6 s, so sends are caught mid-flight.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from chaos_support import Proc, process_env

from producers.producer import Producer
from worker import statuses
from worker.serving import ServerThread
from worker.settings import Settings
from worker.simulator import Simulator, SimulatorConfig
from worker.simulator import create_app as create_simulator_app
from worker.simulator.faults import FaultConfig
from worker.store import Store, messages

MESSAGES = 24
LATENCY_MS = 600


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    sim = Simulator(SimulatorConfig(faults=FaultConfig(latency_ms=LATENCY_MS)))
    with ServerThread(create_simulator_app(sim)) as server:
        sim.url = server.url
        yield sim


@pytest.fixture
def settings(redis_url: str, tmp_path: Path, simulator: Simulator) -> Iterator[Settings]:
    namespace = f"sendq-shutdown-{uuid.uuid4().hex[:8]}"
    yield Settings(redis_url=redis_url, database_url=f"sqlite:///{tmp_path / 'sendq.db'}", namespace=namespace,
                   telnyx_api_key="KEY-shutdown", telnyx_base_url=f"{simulator.url}/v2",
                   rate_limits={"long_code": 10_000.0}, account_mps={"sms": 10_000.0})
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{namespace}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def by_status(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        return dict(conn.execute(sa.select(messages.c.status, sa.func.count()).group_by(messages.c.status)).all())


def wait_for(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_sigterm_finishes_sends_in_flight_and_returns_the_rest(settings: Settings, simulator: Simulator,
                                                                tmp_path: Path) -> None:
    store = Store.from_url(settings.database_url)
    client = redis.Redis.from_url(str(settings.redis_url))
    env = process_env(settings, log_level="INFO")
    worker = Proc([*_sendq(), "worker", "--processes", "1", "--threads", "4"], env, tmp_path / "worker-1.log")
    try:
        with Producer.connect(settings) as producer:
            ids = [producer.send(f"+1312555{5000 + i:04d}", from_="+13125550101", text=f"m{i}")
                   for i in range(MESSAGES)]
        wait_for(lambda: by_status(store).get(statuses.SENDING, 0) >= 2, 60, "sends in flight")
        worker.popen.send_signal(signal.SIGTERM)  # the supervisor only, as an orchestrator does
        assert worker.popen.wait(40) == 0
        after_stop = by_status(store)

        assert statuses.SENDING not in after_stop, "every send in flight finished and recorded its outcome"
        submitted, queued = after_stop.get(statuses.SUBMITTED, 0), after_stop.get(statuses.QUEUED, 0)
        assert submitted >= 2 and submitted + queued == MESSAGES
        assert len(simulator.state.messages) == submitted, "Telnyx has exactly the messages recorded as sent"
        ns = settings.namespace
        unacked = [key for key in client.scan_iter(f"{ns}:__acks__.*") if client.scard(key)]
        assert not unacked, "no job is left for the heartbeat timeout to recover: prefetched ones went back"
        assert client.llen(f"{ns}:default") == queued, "every message not sent has its job back in the queue"
        assert "worker process stopping" in (tmp_path / "worker-1.log").read_text()

        worker = Proc([*_sendq(), "worker", "--processes", "1", "--threads", "8"], env, tmp_path / "worker-2.log")
        wait_for(lambda: by_status(store).get(statuses.SUBMITTED, 0) == MESSAGES, 60, "the rest to be sent")
        keys = [m.idempotency_key for m in simulator.state.messages.values()]
        assert sorted(keys) == sorted(ids), "each message reached Telnyx exactly once"
    finally:
        worker.stop(10)
        client.close()
        store.close()


def _sendq() -> list[str]:
    import sys

    return [sys.executable, "-m", "producers.cli"]


def test_a_killed_child_s_jobs_come_back_at_once_not_after_the_heartbeat_timeout(
        settings: Settings, simulator: Simulator, tmp_path: Path) -> None:
    """SIGKILL of the dramatiq child mid-send: the supervisor sees it exit and releases its broker worker, so its
    jobs go back to their queues at the next maintenance. With a heartbeat timeout of 120 s, only that release can
    bring every message to Telnyx within the 60 s this test waits; each resumes with its Idempotency-Key."""
    store = Store.from_url(settings.database_url)
    env = process_env(settings, log_level="INFO", heartbeat_timeout_ms=120_000)
    worker = Proc([*_sendq(), "worker", "--processes", "1", "--threads", "4"], env, tmp_path / "worker.log")
    try:
        with Producer.connect(settings) as producer:
            ids = [producer.send(f"+1312555{6000 + i:04d}", from_="+13125550101", text=f"k{i}")
                   for i in range(MESSAGES)]
        wait_for(lambda: by_status(store).get(statuses.SENDING, 0) >= 2, 60, "sends in flight")
        wait_for(lambda: len(worker.children()) == 1, 10, "the child")
        os.kill(worker.children()[0], signal.SIGKILL)
        wait_for(lambda: by_status(store).get(statuses.SUBMITTED, 0) == MESSAGES, 60,
                 "every message sent, the killed child's included")
        keys = sorted(m.idempotency_key for m in simulator.state.messages.values())
        assert keys == sorted(ids), "each message reached Telnyx exactly once"
    finally:
        worker.stop(10)
        store.close()
