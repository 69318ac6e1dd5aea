"""The reconciler in ``sendq scheduler``: messages whose outcome the store cannot know on its own.

- **Stuck sends.** A ``sending`` message older than ``sending_lease_s`` lost its worker between the claim and
  the answer (the job time limit is 120 s, the lease longer): Telnyx may or may not have the message. Policy
  ``ambiguous_policy``:

  - ``retry`` (default): back to ``queued`` and re-enqueued. The send carries the same ``Idempotency-Key`` (the
    message id), so a Telnyx that took the first attempt answers with that message instead of sending another.
    Telnyx keeps keys for 24 h, so a message stuck longer than :data:`IDEMPOTENCY_WINDOW_S` is failed instead,
    and so is one that has used up its attempts (``send_max_retries`` + 1 claims): a message that kills its
    worker every time must not loop for ever.
  - ``fail``: ``failed`` at once. Either way the record gets an error with code ``ambiguous``.

- **Missing final webhooks.** A ``submitted`` or ``sent`` message with no change for ``finalize_after_s`` is
  fetched with ``GET /messages/{telnyx_id}`` and Telnyx's answer is applied through :mod:`worker.events`, as a
  synthetic event ``rc:{telnyx_id}:{status}``: the event store dedupes a re-run, and the rank rule means a
  real webhook arriving later changes nothing it should not. A message Telnyx is still working on is touched,
  so it is asked about again only after another ``finalize_after_s``. Telnyx keeps messages for 10 days: a 404
  on a message older than that ends it ``delivery_unconfirmed`` (Telnyx's own word for "sent, outcome never
  confirmed"); a 404 on a younger one is asked again later.

Fetches run on a background thread, a batch at a time, so a slow or failing Telnyx never delays the
scheduler's promotions; after a 429, 5xx or unreachable Telnyx the fetches pause for :data:`PAUSE_S`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from worker import metrics, statuses
from worker.classify import AMBIGUOUS
from worker.dependencies import unavailable
from worker.errors import TelnyxError, TelnyxRefused, TelnyxUnavailable
from worker.events import FINALIZED, SENT, apply_event
from worker.hooks import Hooks
from worker.outcomes import Outcomes
from worker.settings import Settings
from worker.store import Store, utcnow

if TYPE_CHECKING:
    from worker.actors import Actors
    from worker.telnyx import TelnyxClient

log = logging.getLogger(__name__)

#: Telnyx replays an Idempotency-Key's answer for 24 h; past this, a retry could send twice.
IDEMPOTENCY_WINDOW_S = 23 * 3600
#: How long Telnyx keeps a message for ``GET /messages/{id}``.
TELNYX_RETENTION_S = 10 * 86400
#: Messages fetched per background pass; the next pass starts at the next tick.
FETCH_BATCH = 20
#: Fetches wait this long after Telnyx answered 429 or 5xx or could not be reached.
PAUSE_S = 30.0
#: The events table keys events by a string of at most 64 characters.
EVENT_ID_MAX = 64



def synthetic_event(telnyx_id: str, payload: dict[str, Any]) -> dict[str, Any] | None:
    """The event a retrieved message amounts to: ``message.finalized`` when every recipient's status is final,
    ``message.sent`` when sent, None while Telnyx is still working on it."""
    found = [r.get("status") for r in payload.get("to") or [] if isinstance(r, dict)]
    if found and all(s in statuses.TELNYX_FINAL for s in found):
        event_type = FINALIZED
    elif statuses.SENT in found or any(s in statuses.TELNYX_FINAL for s in found):
        event_type = SENT
    else:
        return None
    outcome = found[0] if len(set(found)) == 1 else "mixed-" + _digest(",".join(map(str, found)))
    event_id = f"rc:{telnyx_id}:{outcome if event_type == FINALIZED else statuses.SENT}"
    if len(event_id) > EVENT_ID_MAX:
        event_id = "rc:" + _digest(event_id, 40)
    occurred_at = payload.get("completed_at" if event_type == FINALIZED else "sent_at") or utcnow().isoformat()
    return {"data": {"record_type": "event", "id": event_id, "event_type": event_type, "occurred_at": occurred_at,
                     "payload": payload}}


def _digest(text: str, length: int = 8) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:length]


class Reconciler:
    """Stuck sends and missing final webhooks. ``telnyx`` None skips the fetches (no API key)."""

    def __init__(self, settings: Settings, store: Store, telnyx: TelnyxClient | None, actors: Actors) -> None:
        self.settings = settings
        self.store = store
        self.telnyx = telnyx
        self.actors = actors
        #: The application's status hook: a message the reconciler makes final is handed over like any other.
        self.hooks = Hooks.from_settings(settings, actors.broker)
        self.outcomes = Outcomes(store, self.hooks)
        self._lock = threading.Lock()
        self._pass: threading.Thread | None = None
        self._paused_until = 0.0
        self._reconciled = 0
        #: Set when Redis lost its data: messages not updated since are fetched without waiting finalize_after_s.
        self._recheck_before: datetime | None = None
        if telnyx is None:
            log.warning("no Telnyx client (TELNYX_API_KEY unset): messages missing a final webhook are not fetched")

    def tick(self) -> dict[str, int]:
        """Stuck sends now; a fetch pass in the background. Counts: ``resent`` (stuck sends re-enqueued) and
        ``reconciled`` (messages moved by fetches that finished since the last tick)."""
        resent = self.stuck_sending()
        self._start_pass()
        with self._lock:
            reconciled, self._reconciled = self._reconciled, 0
        return {"resent": resent, "reconciled": reconciled}

    def recheck_before(self, when: datetime) -> None:
        """Fetch the ``submitted`` and ``sent`` messages not updated since ``when`` without waiting
        ``finalize_after_s``: Redis lost its data at about ``when``, and with it the jobs of webhooks already
        answered (their events would otherwise wait for the reconciler's usual delay)."""
        self._recheck_before = when

    def close(self, timeout_s: float = 30.0) -> None:
        """Wait for a running fetch pass to end."""
        running = self._pass
        if running is not None:
            running.join(timeout_s)

    # -- stuck sends ----------------------------------------------------------------------------------------

    def stuck_sending(self) -> int:
        """Apply ``ambiguous_policy`` to ``sending`` messages past the lease; returns how many were re-enqueued."""
        cutoff = utcnow() - timedelta(seconds=self.settings.sending_lease_s)
        resent = 0
        for message_id in self.store.stale(statuses.SENDING, cutoff):
            row = self.store.row(message_id)
            if not self._may_retry(row):
                self._fail(row)
            elif self._requeue(row):
                resent += 1
        if resent:
            log.warning("re-sent %d messages whose worker was lost mid-send (same Idempotency-Key)", resent)
        return resent

    def _may_retry(self, row: dict[str, Any]) -> bool:
        age_s = (utcnow() - row["updated_at"]).total_seconds()
        return (self.settings.ambiguous_policy == "retry" and age_s < IDEMPOTENCY_WINDOW_S
                and row["attempts"] <= self.settings.send_max_retries)

    def _requeue(self, row: dict[str, Any]) -> bool:
        error = self._ambiguous(row, "re-sent with the same Idempotency-Key")
        if not self.store.transition(row["id"], statuses.QUEUED, from_=[statuses.SENDING], add_errors=[error]):
            return False  # the worker answered after all
        self.actors.hand_over(self.store, row["id"], row["priority"], after=None)
        metrics.RECONCILED.labels("resent").inc()
        return True

    def _fail(self, row: dict[str, Any]) -> None:
        error = self._ambiguous(row, "not re-sent: " + self._why_not(row))
        if self.outcomes.move(row["id"], statuses.FAILED, from_=[statuses.SENDING], add_errors=[error]):
            metrics.RECONCILED.labels("failed_ambiguous").inc()
            log.warning("message %s failed: its send is ambiguous (%s)", row["id"], error["detail"])

    def _why_not(self, row: dict[str, Any]) -> str:
        if self.settings.ambiguous_policy != "retry":
            return "SENDQ_AMBIGUOUS_POLICY=fail"
        if row["attempts"] > self.settings.send_max_retries:
            return f"all {row['attempts']} attempts used"
        return "older than Telnyx keeps Idempotency-Keys (24 h)"

    def _ambiguous(self, row: dict[str, Any], outcome: str) -> dict[str, Any]:
        return {"code": AMBIGUOUS, "title": "Send outcome unknown",
                "detail": f"sending for over {self.settings.sending_lease_s} s (its worker was lost after the "
                          f"claim, attempt {row['attempts']}); Telnyx may have the message; {outcome}"}

    # -- missing final webhooks -----------------------------------------------------------------------------

    def _start_pass(self) -> None:
        if self.telnyx is None or time.monotonic() < self._paused_until:
            return
        if self._pass is not None and self._pass.is_alive():
            return
        self._pass = threading.Thread(target=self._run_pass, name="sendq-reconcile", daemon=True)
        self._pass.start()

    def _run_pass(self) -> None:
        try:
            moved = self.unfinalized()
        except Exception as exc:
            # An outage is the scheduler's to report (once, when it starts and ends); the next pass tries again.
            if unavailable(exc) is None:
                log.exception("reconcile pass failed; trying again at a later tick")
            return
        with self._lock:
            self._reconciled += moved

    def unfinalized(self, limit: int = FETCH_BATCH) -> int:
        """Fetch up to ``limit`` messages missing a final webhook and apply what Telnyx says; returns how many
        changed status. Stops early (and pauses) when Telnyx is unavailable."""
        if self.telnyx is None:
            return 0
        cutoff = utcnow() - timedelta(seconds=self.settings.finalize_after_s)
        recheck = self._recheck_before
        if recheck is not None and recheck > cutoff:
            cutoff = recheck
        moved = found = 0
        for status in (statuses.SUBMITTED, statuses.SENT):
            stale = self.store.stale(status, cutoff, limit=limit)
            found += len(stale)
            for message_id in stale:
                try:
                    moved += self._reconcile_one(message_id, status)
                except TelnyxUnavailable as exc:
                    self._paused_until = time.monotonic() + PAUSE_S
                    log.warning("reconciler: Telnyx unavailable (%s); fetches paused for %.0f s", exc, PAUSE_S)
                    return moved
        if recheck is not None and not found and self._recheck_before is recheck:
            self._recheck_before = None  # every message of before the loss was asked about
        return moved

    def _reconcile_one(self, message_id: str, status: str) -> int:
        row = self.store.row(message_id)
        if not row["telnyx_id"]:
            self.store.touch(message_id, status)
            return 0
        try:
            payload = self.telnyx.messages.retrieve(row["telnyx_id"]) if self.telnyx else None
        except TelnyxRefused as exc:
            return self._refused(row, status, exc)
        event = synthetic_event(row["telnyx_id"], payload) if isinstance(payload, dict) else None
        if event is not None:
            apply_event(self.store, event, self.hooks)
        now_status = self.store.row(message_id)["status"]
        if now_status == status:
            self.store.touch(message_id, status)  # Telnyx is still on it: ask again after finalize_after_s
            metrics.RECONCILED.labels("unresolved").inc()
            return 0
        metrics.RECONCILED.labels("finalized" if statuses.is_final(now_status) else "advanced").inc()
        log.info("reconciled %s from Telnyx: %s -> %s", message_id, status, now_status)
        return 1

    def _refused(self, row: dict[str, Any], status: str, exc: TelnyxError) -> int:
        if exc.status == 404 and self._age_s(row) >= TELNYX_RETENTION_S:
            error = {"code": "not_found", "title": "Outcome never confirmed",
                     "detail": "no final webhook arrived, and Telnyx no longer keeps the message (10 days)"}
            if self.outcomes.move(row["id"], statuses.DELIVERY_UNCONFIRMED, from_=[status], add_errors=[error]):
                metrics.RECONCILED.labels("unconfirmed").inc()
                return 1
            return 0
        log.warning("reconciler: GET /messages/%s refused (%s); asking again later", row["telnyx_id"], exc)
        self.store.touch(row["id"], status)
        metrics.RECONCILED.labels("unresolved").inc()
        return 0

    @staticmethod
    def _age_s(row: dict[str, Any]) -> float:
        """Seconds since the message could have reached Telnyx (not before its ``send_at``)."""
        start: datetime = max(row["created_at"], row["send_at"] or row["created_at"])
        return (utcnow() - start).total_seconds()
