"""The dramatiq broker: Redis, sendq's queues and the middleware every sendq process uses."""

from __future__ import annotations

from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from worker.settings import Settings

URGENT, DEFAULT, BULK, EVENTS = "urgent", "default", "bulk", "events"
#: Every queue sendq consumes. Urgent traffic (2FA) has its own queue so a campaign never delays it;
#: webhook events have theirs so finalization never waits behind sends.
QUEUES = (URGENT, DEFAULT, BULK, EVENTS)
QUEUE_FOR_PRIORITY = {"urgent": URGENT, "normal": DEFAULT, "bulk": BULK}
PRIORITY_FOR_QUEUE = {queue: priority for priority, queue in QUEUE_FOR_PRIORITY.items()}

#: A job that runs longer than this is stopped (a hung socket, a stuck database): sends retry safely.
JOB_TIME_LIMIT_MS = 120_000


def build_broker(settings: Settings) -> RedisBroker:
    """A broker on ``settings.redis_url`` with every sendq queue declared. Connects lazily."""
    if not settings.redis_url:
        raise ValueError("build_broker needs a Redis URL; start the embedded server first")
    middleware = [
        AgeLimit(),
        TimeLimit(time_limit=JOB_TIME_LIMIT_MS),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(max_retries=settings.send_max_retries, min_backoff=settings.send_min_backoff_ms,
                max_backoff=settings.send_max_backoff_ms),
        CurrentMessage(),
    ]
    # Faster recovery of a killed worker's jobs than dramatiq's defaults (60 s, 0.1%): see settings.
    broker = RedisBroker(url=settings.redis_url, namespace=settings.namespace, middleware=middleware,
                         heartbeat_timeout=settings.heartbeat_timeout_ms,
                         maintenance_chance=settings.maintenance_chance)
    for queue in QUEUES:
        broker.declare_queue(queue)
    return broker
