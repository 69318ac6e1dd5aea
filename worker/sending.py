"""Sending one message: reserve its rate slot, claim it, hand it to Telnyx, record what happened.

1. The row is read; only a ``queued`` message owned by this job goes on (a duplicate or superseded job
   stops here for the price of a read, before it takes a rate slot another message could use).
   A recipient on the suppression list (opted out of the sender or its profile) ends it ``suppressed`` here,
   without a Telnyx call.
2. The limiter reserves the next slot on the sender and the account in one Redis call. A slot within
   ``limiter_max_wait_s`` is slept for; a later one is not reserved at all and the job is deferred
   (:class:`Defer`) to when it comes, which costs no retry: a throttled sender never holds worker threads
   that other senders' messages could use.
3. The row is claimed (``queued`` -> ``sending``) by a conditional UPDATE, so of two jobs, or a job and a
   cancel, exactly one goes on.
4. The request carries ``Idempotency-Key: <our id>``, so a retry after an ambiguous failure cannot make
   Telnyx send twice. A 429 pushes the sender's slots back for every worker and defers the message.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

import dramatiq

from worker import metrics, statuses
from worker.classify import ACCOUNT, Action, classify
from worker.errors import TelnyxError, TelnyxUnavailable, ValidationError
from worker.events import apply_pending
from worker.holds import ACCOUNT_KEY
from worker.limits import Meter, meter
from worker.services import Services
from worker.store import utcnow
from worker.telnyx.messages import ENDPOINTS

log = logging.getLogger(__name__)

SKIPPED = "skipped"
#: Without a hint from Telnyx, how long a 429 holds the sender back.
DEFAULT_PUSH_BACK_S = 1.0


class Defer(Exception):
    """Run this job again in ``delay_s`` seconds, without counting a retry."""

    def __init__(self, delay_s: float, reason: str) -> None:
        super().__init__(f"deferred {delay_s:.3f} s ({reason})")
        self.delay_s = delay_s
        self.reason = reason


def send_one(services: Services, message_id: str, *, last_try: bool, generation: int | None = None) -> str:
    """Send ``message_id`` if it is still ``queued`` (and owned by job ``generation``, when given); returns the
    status it reached (or ``skipped``).

    Raises :class:`Defer` when its rate slot is too far off or its sender is held, and the Telnyx error (or
    ``dramatiq.Retry`` with Telnyx's delay) after putting the message back to ``queued`` (``failed`` when
    ``last_try``) when :func:`worker.classify.classify` says to retry it through the queue.
    """
    store = services.store
    row = store.row(message_id)
    if row["status"] != statuses.QUEUED or (generation is not None and (row["job_gen"] or 0) != generation):
        return SKIPPED
    if (outcome := _suppress(services, row)) is not None:
        return outcome
    try:
        metered = _reserve(services, row)
    except ValidationError as exc:
        # A stored message no rate limit can be found for (hand-edited, or from an older sendq) must not go.
        store.transition(message_id, statuses.REJECTED, from_=[statuses.QUEUED],
                         add_errors=[{"code": "sendq.invalid", "title": "cannot be rate limited", "detail": str(exc)}])
        return statuses.REJECTED
    claimed = store.claim(message_id, generation)
    if claimed is None:
        if store.expire(message_id):
            metrics.MESSAGES.labels(statuses.EXPIRED, row["kind"], row["priority"]).inc()
            services.hooks.final_status(store, message_id, statuses.EXPIRED)
            return statuses.EXPIRED
        return SKIPPED
    try:
        data = services.telnyx.messages.send(row["endpoint"], row["body"], idempotency_key=row["id"])
        telnyx_id = str(data["id"])
    except TelnyxError as exc:
        return _on_error(services, row, metered, exc, last_try=last_try)
    except (KeyError, TypeError) as exc:
        unavailable = TelnyxUnavailable(f"Telnyx accepted the request without an id: {exc!r}", ambiguous=True)
        return _on_error(services, row, metered, unavailable, last_try=last_try)

    # Telnyx-side scheduling answers with a message Telnyx holds until send_at: it stays `scheduled`.
    status = statuses.SCHEDULED if row["endpoint"] == ENDPOINTS["schedule"] else statuses.SUBMITTED
    store.transition(message_id, status, from_=[statuses.SENDING],
                     values={"telnyx_id": telnyx_id, "parts": data.get("parts"), "cost": data.get("cost")})
    metrics.MESSAGES.labels(status, row["kind"], row["priority"]).inc()
    metrics.observe_accepted(row["priority"], max(row["created_at"], row["send_at"] or row["created_at"]), utcnow())
    apply_pending(store, message_id, telnyx_id, services.hooks)
    return status


def _on_error(services: Services, row: dict[str, Any], metered: Meter | None, exc: TelnyxError, *,
              last_try: bool) -> str:
    """Act on a failed call as :func:`worker.classify.classify` decides; returns a final status or raises."""
    decision = classify(exc)
    if isinstance(exc, TelnyxUnavailable) and exc.ambiguous:
        metrics.AMBIGUOUS.inc()  # it may have gone out; the same Idempotency-Key on the retry keeps it single
    if decision.action is Action.REJECT:
        return _finish(services, row, statuses.REJECTED, exc)
    if decision.action is Action.SUPPRESS:
        _remember_opt_out(services, row, exc)
        return _finish(services, row, statuses.SUPPRESSED, exc)
    if decision.action is Action.HOLD_SENDER and services.holds is not None:
        held = ACCOUNT_KEY if decision.scope == ACCOUNT else _sender(row)
        services.holds.hold(held, decision.hold_s or DEFAULT_PUSH_BACK_S, decision.reason, code=decision.code)
        _finish(services, row, statuses.QUEUED, exc, attempt_delta=-1)  # the sender's state, not the message's
        raise Defer(decision.hold_s or DEFAULT_PUSH_BACK_S, "sender_held") from exc
    if exc.status == 429 and metered is not None and isinstance(exc, TelnyxUnavailable):
        # Throttled, not failed: every worker backs off and the message waits its turn, retries untouched.
        seconds = _push_back(services, row, metered, exc)
        _finish(services, row, statuses.QUEUED, exc, attempt_delta=-1)
        raise Defer(seconds, "telnyx_429") from exc
    # dramatiq's Retries middleware re-enqueues this job after its backoff: tell the scheduler when to expect it.
    retry_in_s = (decision.delay_s or 0) + services.settings.send_max_backoff_ms / 1000
    _finish(services, row, statuses.FAILED if last_try else statuses.QUEUED, exc,
            values={"job_due_at": utcnow() + timedelta(seconds=retry_in_s)})
    if not last_try:
        reason = f"code_{metrics.code_label(decision.code)}" if decision.code else metrics.status_reason(exc.status)
        metrics.RETRIES.labels("job", reason).inc()
    if decision.delay_s and not last_try:
        raise dramatiq.Retry(delay=int(decision.delay_s * 1000)) from exc
    raise exc


def _suppress(services: Services, row: dict[str, Any]) -> str | None:
    """End the message ``suppressed`` without calling Telnyx if a recipient opted out of its sender or profile.

    Returns None when it may go on, else the status it reached. A group MMS is suppressed as a whole when any
    recipient opted out: Telnyx refuses such a request as a whole (40300), and sending to the others alone
    would start a different group conversation than the one asked for. One indexed query (see
    :class:`worker.suppressions.Suppressions`).
    """
    blocked = services.suppressions.suppressed(row["recipients"], sender=row["sender"],
                                               profile=row["messaging_profile_id"])
    if not blocked:
        return None
    scope = " / ".join(s for s in (row["sender"], row["messaging_profile_id"]) if s)
    error = {"code": "sendq.suppressed", "title": "Recipient opted out",
             "detail": f"{', '.join(blocked)} opted out of messages from {scope} (STOP); not sent"}
    if not services.store.transition(row["id"], statuses.SUPPRESSED, from_=[statuses.QUEUED], add_errors=[error]):
        return SKIPPED  # cancelled or taken meanwhile
    metrics.MESSAGES.labels(statuses.SUPPRESSED, row["kind"], row["priority"]).inc()
    services.hooks.final_status(services.store, row["id"], statuses.SUPPRESSED)
    return statuses.SUPPRESSED


def _remember_opt_out(services: Services, row: dict[str, Any], exc: TelnyxError) -> None:
    """Telnyx refused the message because a recipient opted out (40300): add the pair to the suppression list,
    so the next message to them stops before calling Telnyx."""
    services.suppressions.record_refusal(row["recipients"], sender=row["sender"], profile=row["messaging_profile_id"],
                                         details=[e.detail for e in exc.errors])


def _sender(row: dict[str, Any]) -> str:
    return str(row["sender"] or row["messaging_profile_id"])


def _reserve(services: Services, row: dict[str, Any]) -> Meter | None:
    """Take the message's rate slot, sleeping until it if it is near; raise :class:`Defer` if it is not."""
    if services.holds is not None:
        hold = services.holds.check(_sender(row))
        if hold is not None:
            metrics.DEFERRALS.labels("sender_held").inc()
            raise Defer(hold.seconds_left, "sender_held")
    if services.limiter is None or row["endpoint"] == ENDPOINTS["schedule"]:
        return None  # Telnyx-side scheduling meters the send itself, at send_at
    metered = meter(row["kind"], row["sender"], row["messaging_profile_id"], row["body"],
                    cost_mode=services.settings.limiter_cost)
    if metered is None:
        return None
    max_wait = services.settings.limiter_max_wait_s
    slot = services.limiter.reserve(metered.keys, cost=metered.cost, urgent=row["priority"] == "urgent",
                                    max_wait_s=max_wait)
    if not slot.granted:
        metrics.DEFERRALS.labels(slot.limited_by or "rate").inc()
        # Come back when the slot is within reach, so the sender stays busy without a gap.
        raise Defer(max(slot.wait_s - max_wait, 0.0) + 0.001, slot.limited_by or "rate")
    metrics.LIMITER_WAIT.labels(metered.keys.sender_type).observe(slot.wait_s)
    if services.usage is not None:
        services.usage.record(metered.keys, metered.cost)
    if slot.wait_s > 0:
        time.sleep(slot.wait_s)
    return metered


def _push_back(services: Services, row: dict[str, Any], metered: Meter, exc: TelnyxUnavailable) -> float:
    seconds = exc.retry_after_s if exc.retry_after_s is not None else DEFAULT_PUSH_BACK_S
    # 10011 is the account's API rate; 40318 and others are the sender's queue.
    services.limiter.push_back(metered.keys, seconds, account="10011" in exc.codes)  # type: ignore[union-attr]
    log.warning("Telnyx 429 for %s from %s: every worker holds the sender back %.1f s",
                row["id"], row["sender"] or row["messaging_profile_id"], seconds)
    return seconds


def _finish(services: Services, row: dict[str, Any], status: str, exc: TelnyxError, *, attempt_delta: int = 0,
            values: dict[str, Any] | None = None) -> str:
    log.warning("send %s: %s -> %s", row["id"], exc, status)
    moved = services.store.transition(row["id"], status, from_=[statuses.SENDING], values=values,
                                      attempt_delta=attempt_delta,
                                      add_errors=[e.as_dict() for e in exc.errors] or
                                      [{"code": None, "title": "request failed", "detail": str(exc)}])
    if moved:
        services.hooks.final_status(services.store, row["id"], status)  # the application's hook, if final
    metrics.MESSAGES.labels(status, row["kind"], row["priority"]).inc()
    for code in exc.codes:
        metrics.TELNYX_ERRORS.labels(metrics.code_label(code)).inc()
    return status
