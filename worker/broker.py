"""The dramatiq broker: Redis, sendq's queues and the middleware every sendq process uses."""

from __future__ import annotations

from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)

from worker.dependencies import Dependencies
from worker.dramatiq_internals import OutageRetries
from worker.queues import QUEUES
from worker.settings import Settings

#: A job that runs longer than this is stopped (a hung socket, a stuck database): sends retry safely.
JOB_TIME_LIMIT_MS = 120_000


def build_broker(settings: Settings, *, dependencies: Dependencies | None = None) -> RedisBroker:
    """A broker on ``settings.redis_url`` with every sendq queue declared. Connects lazily.

    ``dependencies`` (worker processes) makes a job that meets an outage wait for it, spending no retry.
    """
    if not settings.redis_url:
        raise ValueError("build_broker needs a Redis URL; start the embedded server first")
    middleware = [
        AgeLimit(),
        TimeLimit(time_limit=JOB_TIME_LIMIT_MS),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        OutageRetries(dependencies, max_retries=settings.send_max_retries,
                      min_backoff=settings.send_min_backoff_ms, max_backoff=settings.send_max_backoff_ms),
        CurrentMessage(),
    ]
    # Faster recovery of a killed worker's jobs than dramatiq's defaults (60 s, 0.1%): see settings.
    # RedisBroker.__init__ has no annotations in dramatiq.
    broker = RedisBroker(  # type: ignore[no-untyped-call]
        url=settings.redis_url, namespace=settings.namespace, middleware=middleware,
        heartbeat_timeout=settings.heartbeat_timeout_ms, maintenance_chance=settings.maintenance_chance)
    for queue in QUEUES:
        broker.declare_queue(queue)
    return broker
