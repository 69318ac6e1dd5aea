"""``sendq worker``: the supervisor (:class:`worker.pool.Pool`) and what each of its children runs.

Each child builds its own broker, services and actors from the settings it is handed: nothing is shared across
the fork but configuration.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence

import redis

from worker import job_logs
from worker.actors import Actors
from worker.broker import build_broker
from worker.dependencies import Dependencies
from worker.dramatiq_internals import name_worker, release_dead_worker
from worker.embedded import resolve_redis
from worker.logs import configure_logging, secrets_of
from worker.pool import STOP_TIMEOUT_MS, Pool, start_worker
from worker.services import Services
from worker.settings import Settings
from worker.store import Store

log = logging.getLogger(__name__)


def run_worker(settings: Settings, *, processes: int, threads: int, queues: Sequence[str]) -> int:
    """Run ``processes`` children of ``threads`` worker threads over ``queues`` until SIGTERM; the exit code."""
    settings, embedded = resolve_redis(settings)
    # Fail here, with the reason, rather than in every child; the children find the schema up to date. Started
    # during an outage, wait for the store (logged once) rather than exit.
    services = Services.build(settings)
    Dependencies.of(store=services.store.ping).wait_at_start()
    services.store.migrate()
    services.close()
    client = redis.Redis.from_url(settings.redis_url or "", socket_timeout=5, socket_connect_timeout=5)

    def released(worker_id: str) -> None:
        release_dead_worker(client, settings.namespace, worker_id)

    try:
        return Pool(settings, processes=processes, threads=threads, queues=queues, target=run_child,
                    released=released).run()
    finally:
        client.close()
        if embedded:
            embedded.close()


def run_child(settings: Settings, queues: list[str], threads: int, worker_id: str) -> None:
    """One child of the pool: serve ``queues`` with ``threads`` threads until SIGTERM or SIGINT, as broker worker
    ``worker_id`` (the pool releases that worker's jobs if the child dies)."""
    configure_logging(settings.log_level, json_format=settings.log_format == "json", secrets=secrets_of(settings))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    store = Store.from_url(settings.database_url)
    dependencies = Dependencies.of(store=store.ping, redis=lambda: broker.client.ping())
    broker = build_broker(settings, dependencies=dependencies)
    name_worker(broker, worker_id)
    job_logs.install(dependencies, queues)
    # Started during an outage, the child waits for it here rather than failing (and being respawned) at once.
    if not dependencies.wait_at_start(stop):
        return
    services = Services.build(settings, broker=broker, store=store)
    worker = start_worker(Actors(broker, services), queues=queues, threads=threads,
                          idle_poll_ms=settings.worker_poll_ms)
    log.info("worker process ready: queues=%s threads=%d", ",".join(queues), threads)
    stop.wait()
    # dramatiq stops the worker threads first (each finishes the job it is running: a send in flight completes
    # and records its outcome), then the consumers, then puts every fetched job not started, and every delayed
    # one held in memory, back on its queue in Redis. Nothing waits for the heartbeat timeout.
    log.info("worker process stopping: finishing jobs in progress, returning prefetched ones to Redis")
    worker.stop(timeout=STOP_TIMEOUT_MS)
    if services.usage is not None:
        services.usage.flush()
    broker.close()
    services.close()
    log.info("worker process stopped")
