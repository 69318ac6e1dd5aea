"""``sendq scheduler``: the periodic loop that keeps the store and the queues in agreement.

Each tick:
- promotes ``scheduled`` messages due within ``schedule_lookahead_s`` to ``queued`` and enqueues each as a
  job delayed until its ``send_at``, so a burst due in one second is waiting in Redis when it comes; one
  conditional UPDATE per batch means two schedulers never promote a message twice;
- re-enqueues ``queued`` messages whose job is ``requeue_after_s`` overdue: the store is the system of
  record, and a row can outlive its job (Redis restarted without persistence, an enqueue that failed after
  the commit). The row names the job that owns it, so if the old job turns up after all it stops before it
  takes a rate slot, and a message waiting for a far-off slot is not taken for lost;
- applies parked webhook events whose message has its Telnyx id by now (an event parked by a batch that
  committed just after the send looked for parked events would otherwise wait for the reconciler);
- with a :class:`worker.reconcile.Reconciler`: re-sends or fails ``sending`` messages past their lease, and
  fetches from Telnyx the messages whose final webhook never came;
- with a :class:`worker.optout_sync.PeriodicOptOutSync`: every ``optout_sync_interval_s``, copies the opt-outs
  Telnyx added since the last pass into the suppression list (in the background).

Outages of the store or Redis: a tick that fails because one is down is counted, not logged (the dependency logs
once when the outage starts and once when it ends, see :mod:`worker.dependencies`); while one is down each tick
only probes it, and the first tick after it answers does the work. A message whose enqueue failed is marked in the
store as waiting for it (:data:`worker.store.ENQUEUE_PENDING`) and re-enqueued first, and a Redis that lost its
data (:mod:`worker.redis_epoch`) gets every queued message handed to a new job at once.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from worker.actors import Actors
from worker.bulk_updates import BulkUpdates
from worker.campaigns.store import Campaigns
from worker.dependencies import Dependencies, unavailable
from worker.events import apply_parked_known
from worker.hooks import Hooks
from worker.optout_sync import PeriodicOptOutSync
from worker.queue_metrics import beat
from worker.reconcile import Reconciler
from worker.redis_epoch import RedisEpoch
from worker.settings import Settings
from worker.store import Store, utcnow

log = logging.getLogger(__name__)


class Scheduler:
    """Promotes due scheduled messages and re-enqueues messages whose job was lost. Safe to run twice."""

    def __init__(self, settings: Settings, store: Store, actors: Actors, reconciler: Reconciler | None = None,
                 optout_sync: PeriodicOptOutSync | None = None, dependencies: Dependencies | None = None) -> None:
        self.settings = settings
        self.store = store
        self.actors = actors
        self.reconciler = reconciler
        self.optout_sync = optout_sync
        self.hooks = reconciler.hooks if reconciler is not None else Hooks.from_settings(settings, actors.broker)
        client = getattr(actors.broker, "client", None)
        self.dependencies = dependencies or Dependencies.of(store=store.ping,
                                                            redis=client.ping if client is not None else None)
        self.epoch = RedisEpoch(client, store, settings.namespace) if client is not None else None
        #: Set for the tick after Redis lost its data: bulk updates and campaigns look lost from this moment.
        self._lost_before: datetime | None = None

    def tick(self) -> dict[str, int]:
        """One pass of every duty; returns how many messages each moved."""
        counts = {"redis_lost": self.check_redis_epoch(), "promoted": self.promote_due(),
                  "requeued": self.requeue_lost(), "bulk_requeued": self._requeue_bulk_updates(),
                  "campaigns_started": self.start_campaigns(), "parked_applied": self.apply_parked()}
        self._lost_before = None
        counts |= self.optout_sync.tick() if self.optout_sync else {}
        return counts | (self.reconciler.tick() if self.reconciler else {"resent": 0, "reconciled": 0})

    def check_redis_epoch(self) -> int:
        """When Redis lost its data since the last tick, hand every queued message to a new job (at this tick),
        and have bulk updates, campaign expanders and the reconciler's fetches treat everything of before now as
        lost; returns how many queued messages that concerned (0 when nothing was lost)."""
        if self.epoch is None or not self.epoch.lost():
            return 0
        now = utcnow()
        self._lost_before = now
        marked = self.store.requeue_all()
        if self.reconciler is not None:
            self.reconciler.recheck_before(now)
        log.warning("Redis lost its data (restarted without persistence?): %d queued messages get new jobs now, "
                    "and Telnyx is asked about the messages whose webhooks may have been lost with it", marked)
        return marked

    def promote_due(self) -> int:
        """Hand messages due within the lookahead to the queue, each delayed until its ``send_at``."""
        now = utcnow()
        moved = self.store.promote_due(now + timedelta(seconds=self.settings.schedule_lookahead_s))
        # A failed enqueue marks the rest as waiting for theirs (requeue_lost sends them once Redis answers).
        self.actors.enqueue_owned(self.store, [
            (m["id"], m["priority"], m["job_gen"], max(0, int((m["send_at"] - now).total_seconds() * 1000)) or None)
            for m in moved])
        return len(moved)

    def requeue_lost(self) -> int:
        """Re-enqueue ``queued`` messages whose enqueue failed (first), then those whose job is ``requeue_after_s``
        overdue (it may be gone)."""
        cutoff = utcnow() - timedelta(seconds=self.settings.requeue_after_s)
        requeued = 0
        for lost in self.store.lost_jobs(cutoff):
            if self.actors.hand_over(self.store, lost["id"], lost["priority"], after=lost["job_gen"] or 0):
                requeued += 1
        if requeued:
            log.info("re-enqueued %d queued messages that had no job", requeued)
        return requeued

    def apply_parked(self) -> int:
        """Apply parked events whose message is known by now (see :func:`worker.events.apply_parked_known`)."""
        applied = apply_parked_known(self.store, self.hooks)
        if applied:
            log.info("applied %d parked events whose message became known", applied)
        return applied

    def _requeue_bulk_updates(self) -> int:
        """Re-enqueue bulk updates in progress that no job touched for ``requeue_after_s`` (their job was lost)."""
        updates = BulkUpdates(self.store.engine)
        cutoff = self._lost_before or utcnow() - timedelta(seconds=self.settings.requeue_after_s)
        requeued = [bulk_id for bulk_id in updates.stale(cutoff) if updates.touch(bulk_id, cutoff)]
        for bulk_id in requeued:
            self.actors.enqueue_bulk_update(bulk_id)
        if requeued:
            log.info("re-enqueued %d bulk updates that had no job", len(requeued))
        return len(requeued)

    def start_campaigns(self) -> int:
        """Start the expander of campaigns that came due, and again of running ones whose expander was lost."""
        book = Campaigns(self.store.engine, self.store.reader)
        cutoff = self._lost_before or utcnow() - timedelta(seconds=self.settings.requeue_after_s)
        ids = book.start_due() + book.stalled(cutoff)
        for campaign_id in ids:
            self.actors.enqueue_expander(campaign_id)
        return len(ids)

    #: ``/healthz`` of ``sendq scheduler`` fails once no tick has completed for this long (a stuck loop).
    HEALTHY_WITHIN_S = 300.0
    _last_tick: float | None = None
    _last_pass: float | None = None

    def _beat(self) -> None:
        """Tell ``GET /metrics`` that a tick completed (``sendq_scheduler_last_tick_timestamp_seconds``)."""
        self._last_tick = time.monotonic()
        client = getattr(self.actors.broker, "client", None)
        if client is not None:
            beat(client, self.settings.namespace)

    def health(self) -> dict[str, str]:
        """``{"store": "ok", "redis": "ok", "ticks": "ok"}`` while the dependencies answer and ticks complete (a
        dependency down names itself); the tick age is counted from the first question when none has completed."""
        if self._last_tick is None:
            self._last_tick = time.monotonic()
        age = time.monotonic() - self._last_tick
        return self.dependencies.health() | {
            "ticks": "ok" if age <= self.HEALTHY_WITHIN_S else f"error: no tick completed for {age:.0f} s"}

    def live(self) -> dict[str, str]:
        """``{"loop": "ok"}`` while the loop goes round, a tick run or skipped for an outage (``/livez``)."""
        if self._last_pass is None:
            self._last_pass = time.monotonic()
        age = time.monotonic() - self._last_pass
        return {"loop": "ok" if age <= self.HEALTHY_WITHIN_S else f"error: the loop stopped {age:.0f} s ago"}

    def ready(self) -> bool:
        """Whether every dependency answers: those known to be down are probed (once each) now."""
        return all(d.up or d.check() for d in self.dependencies.by_name.values())

    def run_once(self) -> bool:
        """One tick unless a dependency is down; whether it ran to the end. A tick failing because a dependency
        went down is counted on it (its outage is logged once); any other failure is logged."""
        self._last_pass = time.monotonic()
        if not self.ready():
            return False
        try:
            self.tick()
            self._beat()
        except Exception as exc:
            outage = unavailable(exc)
            if outage is None:
                log.exception("scheduler tick failed; trying again")
            else:
                self.dependencies.failed(outage)
            return False
        return True

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.run_once()
            stop.wait(self.settings.scheduler_interval_s)
        if self.reconciler:
            self.reconciler.close()
        if self.optout_sync:
            self.optout_sync.close()
