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
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from worker.actors import Actors
from worker.bulk_updates import BulkUpdates
from worker.campaigns import Campaigns
from worker.events import apply_parked_known
from worker.hooks import Hooks
from worker.optout_sync import PeriodicOptOutSync
from worker.queue_metrics import beat
from worker.reconcile import Reconciler
from worker.settings import Settings
from worker.store import Store, utcnow

log = logging.getLogger(__name__)


class Scheduler:
    """Promotes due scheduled messages and re-enqueues messages whose job was lost. Safe to run twice."""

    def __init__(self, settings: Settings, store: Store, actors: Actors, reconciler: Reconciler | None = None,
                 optout_sync: PeriodicOptOutSync | None = None) -> None:
        self.settings = settings
        self.store = store
        self.actors = actors
        self.reconciler = reconciler
        self.optout_sync = optout_sync
        self.hooks = reconciler.hooks if reconciler is not None else Hooks.from_settings(settings, actors.broker)

    def tick(self) -> dict[str, int]:
        """One pass of every duty; returns how many messages each moved."""
        counts = {"promoted": self.promote_due(), "requeued": self.requeue_lost(),
                  "bulk_requeued": self._requeue_bulk_updates(), "campaigns_started": self.start_campaigns(),
                  "parked_applied": self.apply_parked()}
        counts |= self.optout_sync.tick() if self.optout_sync else {}
        return counts | (self.reconciler.tick() if self.reconciler else {"resent": 0, "reconciled": 0})

    def promote_due(self) -> int:
        """Hand messages due within the lookahead to the queue, each delayed until its ``send_at``."""
        now = utcnow()
        moved = self.store.promote_due(now + timedelta(seconds=self.settings.schedule_lookahead_s))
        for message in moved:
            delay_ms = max(0, int((message["send_at"] - now).total_seconds() * 1000))
            self.actors.enqueue_send(message["id"], message["priority"], generation=message["job_gen"],
                                     delay_ms=delay_ms or None)
        return len(moved)

    def requeue_lost(self) -> int:
        """Re-enqueue ``queued`` messages whose job is ``requeue_after_s`` overdue (it may be gone)."""
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
        cutoff = utcnow() - timedelta(seconds=self.settings.requeue_after_s)
        requeued = [bulk_id for bulk_id in updates.stale(cutoff) if updates.touch(bulk_id, cutoff)]
        for bulk_id in requeued:
            self.actors.enqueue_bulk_update(bulk_id)
        if requeued:
            log.info("re-enqueued %d bulk updates that had no job", len(requeued))
        return len(requeued)

    def start_campaigns(self) -> int:
        """Start the expander of campaigns that came due, and again of running ones whose expander was lost."""
        book = Campaigns(self.store.engine, self.store.reader)
        cutoff = utcnow() - timedelta(seconds=self.settings.requeue_after_s)
        ids = book.start_due() + book.stalled(cutoff)
        for campaign_id in ids:
            self.actors.enqueue_expander(campaign_id)
        return len(ids)

    #: ``/healthz`` of ``sendq scheduler`` fails once no tick has completed for this long (a stuck loop).
    HEALTHY_WITHIN_S = 300.0
    _last_tick: float | None = None

    def _beat(self) -> None:
        """Tell ``GET /metrics`` that a tick completed (``sendq_scheduler_last_tick_timestamp_seconds``)."""
        self._last_tick = time.monotonic()
        client = getattr(self.actors.broker, "client", None)
        if client is not None:
            beat(client, self.settings.namespace)

    def health(self) -> dict[str, str]:
        """``{"ticks": "ok"}`` while ticks complete; counted from the first question when none has yet."""
        if self._last_tick is None:
            self._last_tick = time.monotonic()
        age = time.monotonic() - self._last_tick
        return {"ticks": "ok" if age <= self.HEALTHY_WITHIN_S else f"error: no tick completed for {age:.0f} s"}

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick()
                self._beat()
            except Exception:
                log.exception("scheduler tick failed; trying again")
            stop.wait(self.settings.scheduler_interval_s)
        if self.reconciler:
            self.reconciler.close()
        if self.optout_sync:
            self.optout_sync.close()
