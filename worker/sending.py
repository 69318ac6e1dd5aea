"""Sending one message: claim it, reserve its rate slot, hand it to Telnyx, record what happened.

The common path costs two SQL statements and one Redis call of sendq's own (``bench/end_to_end.py``;
``tests/test_round_trips.py`` pins the counts):

1. The row is claimed (``queued`` -> ``sending``, counting the attempt) by one conditional UPDATE that also
   refuses a message another job owns now, one past its validity and one to a recipient on the suppression list;
   of two jobs, or a job and a cancel, exactly one goes on, and a duplicate or superseded job stops here before
   it takes a rate slot another message could use. Only when the claim is refused is the row read, to tell why
   (``suppressed`` and ``expired`` end here, without a Telnyx call).
2. The limiter reserves the next slot on the sender and the account in one Redis call, which also checks the
   sender's holds. A slot within ``limiter_max_wait_s`` is slept for; a later one is not reserved at all, and the
   claim is given back (attempt returned, a new job due when the slot comes, one statement): :class:`Defer`,
   which costs no retry, so a throttled sender never holds worker threads other senders' messages could use.
3. The request carries ``Idempotency-Key: <our id>``, so a retry after an ambiguous failure cannot make Telnyx
   send twice. A 429 pushes the sender's slots back for every worker and defers the message.
4. ``submitted`` and Telnyx's id are recorded by one statement that also says whether webhook events about the
   message arrived before the id was known; only then are those applied.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

import dramatiq

from worker import metrics, statuses
from worker.classify import ACCOUNT, AMBIGUOUS, Action, classify
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
    """Run this job again in ``delay_s`` seconds, without counting a retry.

    ``generation`` is the job number the message was handed to when its claim was given back: the caller
    enqueues that job. None when the message was no longer ours to give back (no job is due for it then).
    """

    def __init__(self, delay_s: float, reason: str, generation: int | None = None) -> None:
        super().__init__(f"deferred {delay_s:.3f} s ({reason})")
        self.delay_s = delay_s
        self.reason = reason
        self.generation = generation


def send_one(services: Services, message_id: str, *, last_try: bool, generation: int | None = None,
             job: str | None = None) -> str:
    """Send ``message_id`` if it is still ``queued`` (and owned by job ``generation``, when given); returns the
    status it reached (or ``skipped``). ``job`` is the broker's id of the running job: the same job delivered
    again after its worker died finds the message ``sending`` under that id and takes the send over.

    Raises :class:`Defer` when its rate slot is too far off or its sender is held, and the Telnyx error (or
    ``dramatiq.Retry`` with Telnyx's delay) after putting the message back to ``queued`` (``failed`` when
    ``last_try``) when :func:`worker.classify.classify` says to retry it through the queue.
    """
    row = services.store.claim(message_id, generation, job)
    if row is None:
        found = services.store.row(message_id)
        if not _in_flight(found, generation, job):
            return _not_claimed(services, found, generation)
        row = _resume(services, found)
        if row is None:
            return SKIPPED
    try:
        metered = _reserve(services, row)
    except ValidationError as exc:
        # A stored message no rate limit can be found for (hand-edited, or from an older sendq) must not go.
        services.outcomes.move(message_id, statuses.REJECTED, from_=[statuses.SENDING], add_errors=[
            {"code": "sendq.invalid", "title": "cannot be rate limited", "detail": str(exc)}])
        return statuses.REJECTED
    except Defer as deferred:
        raise _give_back(services, row, deferred.delay_s, deferred.reason) from None
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
    moved = services.store.accepted(message_id, status, telnyx_id=telnyx_id, parts=data.get("parts"),
                                    cost=data.get("cost"))
    if moved is None:
        return SKIPPED  # the reconciler took the message back meanwhile; Telnyx dedupes its resend by our key
    services.outcomes.reached([moved])
    metrics.observe_accepted(row["priority"], max(row["created_at"], row["send_at"] or row["created_at"]), utcnow())
    if moved["parked"]:
        apply_pending(services.store, message_id, telnyx_id, services.hooks)
    return status


def _in_flight(row: dict[str, Any], generation: int | None, job: str | None) -> bool:
    """Whether ``row`` was claimed by this very job: the broker delivered it again because the worker that ran
    it died mid-send (or, rarely, thought it had). A duplicate job for the same message is another job."""
    return (job is not None and generation is not None and row["status"] == statuses.SENDING
            and (row["job_gen"] or 0) == generation and row["claimed_by"] == job)


def _resume(services: Services, row: dict[str, Any]) -> dict[str, Any] | None:
    """Take over the send of a message this job had claimed, at once and with the same Idempotency-Key: Telnyx
    answers a request it already has with the same message, so even a worker still alive and racing this one
    makes no second message. Without this the message would wait out the sending lease (minutes)."""
    metrics.AMBIGUOUS.inc()
    log.warning("send %s: resumed by its redelivered job (attempt %d may have reached Telnyx)",
                row["id"], row["attempts"])
    error = {"code": AMBIGUOUS, "title": "Send outcome unknown",
             "detail": f"the worker of attempt {row['attempts']} was lost mid-send; resumed by the same job with "
                       "the same Idempotency-Key"}
    return services.store.move(row["id"], statuses.SENDING, from_=[statuses.SENDING], condition="owned_and_valid",
                               attempt_delta=1, generation=row["job_gen"] or 0, add_errors=[error])


def _not_claimed(services: Services, row: dict[str, Any], generation: int | None) -> str:
    """Why the claim was refused, acted on: expired and suppressed messages end here; anything else (another
    job owns it, it was cancelled or sent) is skipped."""
    if row["status"] != statuses.QUEUED or (generation is not None and (row["job_gen"] or 0) != generation):
        return SKIPPED
    if services.outcomes.move(row["id"], statuses.EXPIRED, from_=[statuses.QUEUED], condition="past_validity"):
        return statuses.EXPIRED
    return _suppress(services, row)


def _give_back(services: Services, row: dict[str, Any], delay_s: float, reason: str,
               errors: list[dict[str, Any]] | None = None) -> Defer:
    """Give the claim back and hand the message to a job due in ``delay_s``: the :class:`Defer` to raise."""
    generation = services.store.release(row["id"], due_at=utcnow() + timedelta(seconds=delay_s),
                                        add_errors=errors or ())
    return Defer(delay_s, reason, generation=generation)


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
        seconds = decision.hold_s or DEFAULT_PUSH_BACK_S
        services.holds.hold(held, seconds, decision.reason, code=decision.code)
        _count_error(row, statuses.QUEUED, exc)
        # The sender's state, not the message's: the attempt is given back.
        raise _give_back(services, row, seconds, "sender_held", _errors(exc)) from exc
    if exc.status == 429 and metered is not None and isinstance(exc, TelnyxUnavailable):
        # Throttled, not failed: every worker backs off and the message waits its turn, retries untouched.
        seconds = _push_back(services, row, metered, exc)
        _count_error(row, statuses.QUEUED, exc)
        raise _give_back(services, row, seconds, "telnyx_429", _errors(exc)) from exc
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


def _suppress(services: Services, row: dict[str, Any]) -> str:
    """End a ``queued`` message ``suppressed`` without calling Telnyx if a recipient opted out of its sender or
    profile (the claim refused it for that); returns the status it reached, or ``skipped``.

    A group MMS is suppressed as a whole when any recipient opted out: Telnyx refuses such a request as a whole
    (40300), and sending to the others alone would start a different group conversation than the one asked for.
    """
    blocked = services.suppressions.suppressed(row["recipients"], sender=row["sender"],
                                               profile=row["messaging_profile_id"])
    if not blocked:
        return SKIPPED  # the block was lifted since the claim; the scheduler hands the message to a new job
    scope = " / ".join(s for s in (row["sender"], row["messaging_profile_id"]) if s)
    error = {"code": "sendq.suppressed", "title": "Recipient opted out",
             "detail": f"{', '.join(blocked)} opted out of messages from {scope} (STOP); not sent"}
    if services.outcomes.move(row["id"], statuses.SUPPRESSED, from_=[statuses.QUEUED], add_errors=[error]) is None:
        return SKIPPED  # cancelled or taken meanwhile
    return statuses.SUPPRESSED


def _remember_opt_out(services: Services, row: dict[str, Any], exc: TelnyxError) -> None:
    """Telnyx refused the message because a recipient opted out (40300): add the pair to the suppression list,
    so the next message to them stops before calling Telnyx."""
    services.suppressions.record_refusal(row["recipients"], sender=row["sender"], profile=row["messaging_profile_id"],
                                         details=[e.detail for e in exc.errors])


def _sender(row: dict[str, Any]) -> str:
    return str(row["sender"] or row["messaging_profile_id"])


def _reserve(services: Services, row: dict[str, Any]) -> Meter | None:
    """Take the message's rate slot, sleeping until it if it is near; raise :class:`Defer` if it is not, or if
    the sender is held (checked by the same Redis call)."""
    metered = None
    if services.limiter is not None and row["endpoint"] != ENDPOINTS["schedule"]:
        # Telnyx-side scheduling is not metered here: Telnyx meters the send itself, at send_at.
        metered = meter(row["kind"], row["sender"], row["messaging_profile_id"], row["body"],
                        cost_mode=services.settings.limiter_cost)
    if metered is None or services.limiter is None:
        _check_hold(services, row)
        return None
    max_wait = services.settings.limiter_max_wait_s
    holds = services.holds.keys(_sender(row)) if services.holds is not None else ()
    slot = services.limiter.reserve(metered.keys, cost=metered.cost, urgent=row["priority"] == "urgent",
                                    max_wait_s=max_wait, holds=holds)
    if slot.limited_by == "sender_held":
        metrics.DEFERRALS.labels("sender_held").inc()
        raise Defer(slot.wait_s, "sender_held")
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


def _check_hold(services: Services, row: dict[str, Any]) -> None:
    """The hold check of a message the limiter does not meter (one Redis call)."""
    hold = services.holds.check(_sender(row)) if services.holds is not None else None
    if hold is not None:
        metrics.DEFERRALS.labels("sender_held").inc()
        raise Defer(hold.seconds_left, "sender_held")


def _push_back(services: Services, row: dict[str, Any], metered: Meter, exc: TelnyxUnavailable) -> float:
    seconds = exc.retry_after_s if exc.retry_after_s is not None else DEFAULT_PUSH_BACK_S
    # 10011 is the account's API rate; 40318 and others are the sender's queue.
    services.limiter.push_back(metered.keys, seconds, account="10011" in exc.codes)  # type: ignore[union-attr]
    log.warning("Telnyx 429 for %s from %s: every worker holds the sender back %.1f s",
                row["id"], row["sender"] or row["messaging_profile_id"], seconds)
    return seconds


def _errors(exc: TelnyxError) -> list[dict[str, Any]]:
    return [e.as_dict() for e in exc.errors] or [{"code": None, "title": "request failed", "detail": str(exc)}]


def _count_error(row: dict[str, Any], status: str, exc: TelnyxError) -> None:
    log.warning("send %s: %s -> %s", row["id"], exc, status)
    for code in exc.codes:
        metrics.TELNYX_ERRORS.labels(metrics.code_label(code)).inc()


def _finish(services: Services, row: dict[str, Any], status: str, exc: TelnyxError, *,
            values: dict[str, Any] | None = None) -> str:
    """Record a failed call's outcome: ``status`` from ``sending``, with Telnyx's errors."""
    _count_error(row, status, exc)
    services.outcomes.move(row["id"], status, from_=[statuses.SENDING], values=values, add_errors=_errors(exc))
    return status
