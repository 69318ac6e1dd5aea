"""Every place sendq leans on dramatiq beyond its documented API, in one module.

A new dramatiq release is checked here and nowhere else (``tests/test_dramatiq_internals.py`` fails when the
installed version is outside :data:`CHECKED_FROM` .. :data:`CHECKED_BELOW`):

- :class:`AsyncEnqueue` replays ``RedisBroker.enqueue`` over an asyncio client: the ``dispatch`` Lua script and
  its argument list, ``_max_unpack_size`` and ``_should_do_maintenance``;
- :class:`OutageRetries` overrides ``Retries.after_process_message`` (where a failed job is retried or dropped);
- :func:`name_worker` and :func:`release_dead_worker` set a broker's worker id and move a dead worker's heartbeat
  to the epoch in the ``{namespace}:__heartbeats__`` sorted set the ``dispatch`` script's maintenance reads;
- :mod:`worker.job_logs` filters dramatiq's log lines by logger name (:data:`LOGGERS`,
  :func:`consumer_loggers`) and by the start of their text (:data:`CONSUMER_OUTAGE`, :data:`CONSUMER_RESTART`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any, cast

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis, dq_name
from dramatiq.middleware import Retries
from redis import asyncio as aioredis
from starlette.concurrency import run_in_threadpool

from worker.dependencies import Dependencies, unavailable

#: The dramatiq releases this module was read against: ``>= CHECKED_FROM``, ``< CHECKED_BELOW`` (pyproject.toml
#: pins the same range).
CHECKED_FROM, CHECKED_BELOW = (2, 0), (3, 0)

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

    def after_process_message(self, broker: dramatiq.Broker, message: MessageProxy, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        outage = unavailable(exception) if exception is not None and self.dependencies is not None else None
        if outage is None or self.dependencies is None:
            # Retries.after_process_message has no annotations in dramatiq.
            super().after_process_message(  # type: ignore[no-untyped-call]
                broker, message, result=result, exception=exception)
            return
        self.dependencies.failed(outage)
        while True:
            self.dependencies.wait()
            try:
                # The proxy forwards every attribute to its Message, and enqueue only reads and copies it (as
                # dramatiq's own Retries does with a proxy's copy); dramatiq types enqueue for a Message only.
                broker.enqueue(cast("dramatiq.Message[Any]", message), delay=RESUME_DELAY_MS)
                return
            except Exception as exc:
                again = unavailable(exc)
                if again is None:
                    raise
                self.dependencies.failed(again)


class AsyncEnqueue:
    """``RedisBroker.enqueue(message)`` (no delay) over an asyncio Redis client.

    The broker's own dispatch script, with the arguments and middleware hooks its ``enqueue`` uses, so a worker
    gets exactly the job ``Actors.apply_events.send`` would have made. The blocking ``enqueue`` would need a
    thread per webhook batch (see :mod:`worker.webhooks`).
    """

    def __init__(self, broker: RedisBroker, client: aioredis.Redis) -> None:
        self.broker = broker
        self.dispatch = client.register_script(broker.scripts["dispatch"].script)
        self.unpack_size: int | None = None

    async def __call__(self, message: dramatiq.Message[Any]) -> None:
        broker = self.broker
        unpack_size = self.unpack_size
        if unpack_size is None:
            # Asks Redis once per process (a blocking call, cached by dramatiq) unless set by the environment.
            # int(): the method is unannotated in dramatiq; it gives an int (from the environment or Redis).
            unpack_size = self.unpack_size = int(await run_in_threadpool(broker._max_unpack_size))
        message = message.copy(options={"redis_message_id": str(uuid.uuid4())})
        broker.emit_before("enqueue", message, None)
        await self.dispatch(keys=[broker.namespace], args=[
            "enqueue", current_millis(), message.queue_name, broker.broker_id, broker.heartbeat_timeout,
            broker.dead_message_ttl, broker._should_do_maintenance("enqueue"), unpack_size,
            message.options["redis_message_id"], message.encode(),
        ])
        broker.emit_after("enqueue", message, None)


#: The dramatiq loggers that write about jobs. dramatiq names them ``get_logger(module, class)`` after the module
#: that defines the middleware's ``__init__``: OutageRetries logs as a Retries of its own name.
LOGGERS = ("dramatiq.worker.WorkerThread", "dramatiq.worker.Worker", "dramatiq.middleware.retries.Retries",
           "dramatiq.middleware.retries.OutageRetries")
#: Consumer lines that only say Redis is not answering (the first one carries the reason).
CONSUMER_OUTAGE = ("Consumer encountered a connection error", "Failed to post_process_message(")
CONSUMER_RESTART = "Restarting consumer"


def consumer_loggers(queues: Iterable[str]) -> list[str]:
    """The loggers of the consumers of ``queues``: one per queue and one per its delay queue."""
    return [f"dramatiq.worker.ConsumerThread({q})" for queue in queues for q in (queue, dq_name(queue))]


def name_worker(broker: RedisBroker, worker_id: str) -> None:
    """Have ``broker`` keep its heartbeats and acknowledgements under ``worker_id`` (dramatiq draws a random id),
    so the supervisor that chose it can name the worker once its process is gone."""
    broker.broker_id = worker_id


def release_dead_worker(client: Any, namespace: str, worker_id: str) -> None:
    """Tell the broker that worker ``worker_id`` is dead, so its unacknowledged jobs are returned at once.

    The broker returns a worker's unacknowledged jobs to their queues once its heartbeat is older than
    ``heartbeat_timeout`` (15 s by default), at a maintenance pass, which any fetch runs by chance. A supervisor
    that saw its child exit already knows the worker is dead. Moving the heartbeat to the epoch makes the next
    maintenance return the jobs, within a second or two. A job that was mid-send resumes with its
    Idempotency-Key, so this takes that wait out of a crashed 2FA send's delay.
    """
    client.zadd(f"{namespace}:__heartbeats__", {worker_id: 0})
