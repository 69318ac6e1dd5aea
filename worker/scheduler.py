"""``sendq scheduler``: the periodic loop that keeps the store and the queues in agreement.

The store is the system of record: a message row can outlive its job (Redis restarted without
persistence, an enqueue that failed after the commit). Each tick re-enqueues ``queued`` messages that
nobody has touched for ``requeue_after_s``; a duplicate job is harmless, because only one claim of a
row can succeed.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from worker import statuses
from worker.actors import Actors
from worker.settings import Settings
from worker.store import Store, utcnow

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, settings: Settings, store: Store, actors: Actors) -> None:
        self.settings = settings
        self.store = store
        self.actors = actors

    def tick(self) -> int:
        """One pass; returns how many messages were re-enqueued."""
        cutoff = utcnow() - timedelta(seconds=self.settings.requeue_after_s)
        requeued = 0
        for message_id in self.store.stale(statuses.QUEUED, cutoff):
            if self.store.touch(message_id, statuses.QUEUED):
                self.actors.enqueue_send(message_id, self.store.row(message_id)["priority"])
                requeued += 1
        if requeued:
            log.info("re-enqueued %d queued messages that had no job", requeued)
        return requeued

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("scheduler tick failed; trying again")
            stop.wait(self.settings.scheduler_interval_s)
