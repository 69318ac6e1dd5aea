"""The dramatiq broker: Redis, sendq's queues and the middleware every sendq process uses."""

from __future__ import annotations

from typing import Any

import dramatiq
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

from worker.dependencies import Dependencies, unavailable
from worker.queues import QUEUES
from worker.settings import Settings

#: A job that runs longer than this is stopped (a hung socket, a stuck database): sends retry safely.
JOB_TIME_LIMIT_MS = 120_000


#: A job put back after an outage waits this long: long enough to go through the delay queue (a job cannot be
#: re-enqueued on the queue it is still un-acknowledged on), short enough to be lost in the recovery time.
RESUME_DELAY_MS = 1


class OutageRetries(Retries):
    """dramatiq's retries with backoff, except for a job that failed because the store or Redis is down.

    That is the dependency's failure, not the job's: the worker thread waits for every dependency to answer
    again (so a worker whose threads all meet the outage takes no more jobs), then puts the job back on its
    queue as it was, its retry count untouched. Nothing is spent and nothing is dead-lettered however long the
    outage lasts. The job runs again from the start, which every sendq actor allows: a send claimed before the
    outage resumes with its Idempotency-Key, an events batch is applied once.
    """

    def __init__(self, dependencies: Dependencies | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.dependencies = dependencies

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        outage = unavailable(exception) if exception is not None and self.dependencies is not None else None
        if outage is None or self.dependencies is None:
            super().after_process_message(broker, message, result=result, exception=exception)
            return
        self.dependencies.failed(outage)
        while True:
            self.dependencies.wait()
            try:
                broker.enqueue(message, delay=RESUME_DELAY_MS)
                return
            except Exception as exc:
                again = unavailable(exc)
                if again is None:
                    raise
                self.dependencies.failed(again)


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
    broker = RedisBroker(url=settings.redis_url, namespace=settings.namespace, middleware=middleware,
                         heartbeat_timeout=settings.heartbeat_timeout_ms,
                         maintenance_chance=settings.maintenance_chance)
    for queue in QUEUES:
        broker.declare_queue(queue)
    return broker
