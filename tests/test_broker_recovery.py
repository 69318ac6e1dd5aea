"""A killed worker's jobs come back after ``SENDQ_HEARTBEAT_TIMEOUT_MS``, not dramatiq's 60 s default."""

from __future__ import annotations

import time

from producers.producer import Producer
from worker import statuses
from worker.actors import Actors
from worker.broker import build_broker
from worker.pool import start_worker
from worker.services import Services
from worker.settings import Settings


def test_the_broker_takes_its_recovery_settings(base_settings):
    broker = build_broker(base_settings)
    assert (broker.heartbeat_timeout, broker.maintenance_chance) == (15_000, 10_000)
    broker.close()
    tuned = build_broker(Settings(**{**base_settings.model_dump(), "heartbeat_timeout_ms": 2_000,
                                     "maintenance_chance": 1_000_000}))
    assert (tuned.heartbeat_timeout, tuned.maintenance_chance) == (2_000, 1_000_000)
    tuned.close()


def test_a_job_held_by_a_killed_worker_is_redelivered_after_the_heartbeat_timeout(base_settings, simulator):
    settings = base_settings.model_copy(update={"telnyx_base_url": f"{simulator.url}/v2",
                                                "heartbeat_timeout_ms": 1_000, "maintenance_chance": 1_000_000})
    services = Services.build(settings)
    actors = Actors(build_broker(settings), services)
    message_id = Producer(settings, services.store, actors).send("+13125550002", from_="+13125550001", text="hi")

    # A worker fetches the job (it is in that worker's ack set now), then dies without acking or requeueing.
    doomed = build_broker(settings)
    consumer = doomed.consume("default", prefetch=1, timeout=50)
    while next(consumer) is None:
        pass
    killed_at = time.monotonic()
    doomed.close()  # closing a connection pool tells Redis nothing: the ack set and the stale heartbeat stay

    worker = start_worker(actors, threads=2, idle_poll_ms=50)
    try:
        deadline = killed_at + 15
        while services.store.row(message_id)["status"] == statuses.QUEUED:
            assert time.monotonic() < deadline, "the dead worker's job never came back"
            time.sleep(0.05)
        recovered_after = time.monotonic() - killed_at
    finally:
        worker.stop()
        actors.broker.close()
        services.close()
    assert 0.9 <= recovered_after < 10
    assert len(simulator.state.messages) == 1
