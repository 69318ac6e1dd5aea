"""dramatiq's own log lines, held to sendq's rules.

dramatiq names a failed job by its repr, which holds the job's arguments: for an events batch, whole webhooks
with recipients' numbers and message texts (one-time codes). :class:`JobLogFilter` names the job by actor and
id instead. During an outage every job and every consumer fails the same way, and dramatiq logs each one (a
traceback per job, a line per consumer restart): those lines are dropped and the outage reported to
:class:`worker.dependencies.Dependencies`, which logs it once when it starts and once when it ends.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy

from worker.dependencies import REDIS, Dependencies, unavailable
from worker.dramatiq_internals import CONSUMER_OUTAGE, CONSUMER_RESTART, LOGGERS, consumer_loggers
from worker.errors import RedisUnavailable


def job_name(value: Any) -> Any:
    """``send_message[<id>]`` for a dramatiq message, anything else unchanged."""
    if isinstance(value, MessageProxy | dramatiq.Message):
        return f"{value.actor_name}[{value.message_id}]"
    return value


class JobLogFilter(logging.Filter):
    def __init__(self, dependencies: Dependencies | None = None) -> None:
        super().__init__()
        self.dependencies = dependencies

    def filter(self, record: logging.LogRecord) -> bool:
        outage = unavailable(record.exc_info[1] if record.exc_info else None)
        message = str(record.msg)
        if outage is None and message.startswith(CONSUMER_OUTAGE):
            outage = RedisUnavailable(str(record.args[-1] if isinstance(record.args, tuple) and record.args
                                          else "connection error").splitlines()[0])
        if outage is not None and self.dependencies is not None:
            self.dependencies.failed(outage)
            return False
        if message.startswith(CONSUMER_RESTART) and self.dependencies is not None:
            redis = self.dependencies.by_name.get(REDIS)
            if redis is not None and not redis.up:
                return False
        if isinstance(record.args, tuple):
            record.args = tuple(job_name(arg) for arg in record.args)
        return True


def install(dependencies: Dependencies | None, queues: Iterable[str]) -> JobLogFilter:
    """Filter dramatiq's job lines, and those of the consumers of ``queues``, in this process."""
    job_filter = JobLogFilter(dependencies)
    for name in (*LOGGERS, *consumer_loggers(queues)):
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, JobLogFilter)]:
            logger.removeFilter(old)
        logger.addFilter(job_filter)
    return job_filter
