"""sendq's dramatiq actors, bound to one broker and (in worker processes) one set of services.

Actors are thin: they take an id or an event, call the plain function that does the work, and leave
retry decisions to dramatiq's Retries middleware. Producers build ``Actors(broker)`` without services
only to enqueue.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import q_name
from dramatiq.middleware import CurrentMessage

from worker import metrics
from worker.bulk_updates import run_bulk_update
from worker.campaigns.expander import expand_campaign
from worker.dependencies import unavailable
from worker.errors import ConfigurationError, NotFoundError, StoreUnavailable
from worker.events import apply_event, apply_events
from worker.queues import DEFAULT, EVENTS, PRIORITY_FOR_QUEUE, QUEUE_FOR_PRIORITY
from worker.sending import Defer, send_one
from worker.services import Services
from worker.store import Store, utcnow

if TYPE_CHECKING:
    from worker.campaigns.control import Work


class Actors:
    """The actors of one broker. ``services`` is required to run jobs, not to enqueue them."""

    def __init__(self, broker: RedisBroker, services: Services | None = None) -> None:
        self.broker = broker
        self._services = services
        # dramatiq.actor(**options)(fn) is dramatiq.actor(fn, **options) in the form dramatiq's typed overloads take.
        self.send_message = dramatiq.actor(broker=broker, actor_name="send_message", queue_name=DEFAULT,
                                           throws=(NotFoundError, ConfigurationError))(self._send_message)
        self.apply_event = dramatiq.actor(broker=broker, actor_name="apply_event",
                                          queue_name=EVENTS)(self._apply_event)
        #: A batch of webhook events, as ``sendq web`` gathers them (one job per batch).
        self.apply_events = dramatiq.actor(broker=broker, actor_name="apply_events",
                                           queue_name=EVENTS)(self._apply_events)
        self.bulk_update = dramatiq.actor(broker=broker, actor_name="bulk_update",
                                          queue_name=DEFAULT)(self._bulk_update)
        # Short bookkeeping that must not wait behind a backlog of sends: it rides the events queue.
        self.expand_campaign = dramatiq.actor(broker=broker, actor_name="expand_campaign",
                                              queue_name=EVENTS)(self._expand_campaign)

    @property
    def services(self) -> Services:
        if self._services is None:
            raise ConfigurationError("these actors were built to enqueue only")
        return self._services

    def enqueue_send(self, message_id: str, priority: str, *, generation: int | None = None,
                     delay_ms: int | None = None, retries: int = 0) -> None:
        """Enqueue ``send_message`` on the queue of ``priority`` (urgent, normal, bulk).

        ``generation`` is the job number the store handed the message to (see :meth:`Store.next_job`); a job
        without one is never taken for stale. ``retries`` carries a deferred job's retry count over, so
        waiting for a rate slot never spends it.
        """
        args = (message_id,) if generation is None else (message_id, generation)
        message = self.send_message.message_with_options(args=args, retries=retries)
        self.broker.enqueue(message.copy(queue_name=QUEUE_FOR_PRIORITY[priority]), delay=delay_ms)

    def enqueue_owned(self, store: Store, jobs: Iterable[tuple[str, str, int | None, int | None]], *,
                      retries: int = 0) -> int:
        """Enqueue the jobs ``(message id, priority, job number, delay ms)`` of stored ``queued`` messages.

        When an enqueue fails that message and the ones after it are recorded in the store as waiting for their
        enqueue (:meth:`Store.enqueue_failed`), so the scheduler sends them at its first tick after Redis answers,
        and the error is raised (as :class:`RedisUnavailable` when Redis is down). Returns how many were enqueued.
        """
        pending = list(jobs)
        for done, (message_id, priority, generation, delay_ms) in enumerate(pending):
            try:
                self.enqueue_send(message_id, priority, generation=generation, delay_ms=delay_ms, retries=retries)
            except Exception as exc:
                with contextlib.suppress(StoreUnavailable):  # the store down too: the scheduler finds them later
                    store.enqueue_failed((m, g) for m, _, g, _ in pending[done:])
                outage = unavailable(exc)
                if outage is None or outage is exc:
                    raise
                raise outage from exc
        return len(pending)

    def hand_over(self, store: Store, message_id: str, priority: str, *, after: int | None,
                  delay_ms: int | None = None, retries: int = 0) -> bool:
        """Give a ``queued`` message a new job, unless it is not ``queued`` any more or another job took it
        over since job ``after``: the one way sendq re-enqueues a message, so it never has two live jobs.

        If the enqueue fails the message is recorded as waiting for it (see :meth:`enqueue_owned`) and the
        error is raised."""
        due = utcnow() + timedelta(milliseconds=delay_ms or 0)
        generation = store.next_job(message_id, after=after, due_at=due)
        if generation is None:
            return False
        self.enqueue_owned(store, [(message_id, priority, generation, delay_ms)], retries=retries)
        return True

    def enqueue_bulk_update(self, bulk_id: str, *, delay_ms: int | None = None) -> None:
        self.bulk_update.send_with_options(args=(bulk_id,), delay=delay_ms)

    def enqueue_expander(self, campaign_id: str, *, delay_ms: int | None = None) -> None:
        self.expand_campaign.send_with_options(args=(campaign_id,), delay=delay_ms)

    def enqueue_campaign_work(self, store: Store, campaign_id: str, work: Work) -> None:
        """Enqueue what an expander tick or a resume left (:class:`~worker.campaigns.control.Work`): the send
        jobs first, through :meth:`enqueue_owned` (a failed enqueue leaves them to the scheduler and raises, so no
        tick is enqueued either), then the expander's next tick."""
        self.enqueue_owned(store, work.sends)
        if work.expand_in_s is not None:
            self.enqueue_expander(campaign_id, delay_ms=int(work.expand_in_s * 1000) or None)

    # Actors return None: outcomes live in the store and the metrics, not in a result backend.

    def _send_message(self, message_id: str, generation: int | None = None) -> None:
        current = CurrentMessage.get_current_message()
        retries = current.options.get("retries", 0) if current else 0
        try:
            send_one(self.services, message_id, generation=generation, job=current.message_id if current else None,
                     last_try=retries >= self.services.settings.send_max_retries)
        except Defer as deferred:
            if deferred.generation is not None:
                priority = PRIORITY_FOR_QUEUE.get(q_name(current.queue_name) if current else "", "normal")
                self.enqueue_owned(self.services.store, [(message_id, priority, deferred.generation,
                                                          max(1, int(deferred.delay_s * 1000)))], retries=retries)

    def _apply_event(self, event: dict[str, Any]) -> None:
        metrics.EVENTS.labels(apply_event(self.services.store, event, self.services.hooks)).inc()

    def _apply_events(self, batch: list[dict[str, Any]]) -> None:
        for outcome in apply_events(self.services.store, batch, self.services.hooks):
            metrics.EVENTS.labels(outcome).inc()

    def _bulk_update(self, bulk_id: str) -> None:
        # One step per job; the next poll waits in Redis as a delayed message, not in a sleeping thread.
        delay = run_bulk_update(self.services, bulk_id)
        if delay is not None:
            self.enqueue_bulk_update(bulk_id, delay_ms=int(delay * 1000) or None)

    def _expand_campaign(self, campaign_id: str) -> None:
        self.enqueue_campaign_work(self.services.store, campaign_id, expand_campaign(self.services, campaign_id))
