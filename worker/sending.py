"""Sending one message: claim it, hand it to Telnyx, record what happened.

The row is claimed (``queued`` -> ``sending``) by a conditional UPDATE before the HTTP call, so a
duplicate job finds nothing to do. The request carries ``Idempotency-Key: <our id>``, so a retry after an
ambiguous failure cannot make Telnyx send twice.
"""

from __future__ import annotations

import logging

from worker import metrics, statuses
from worker.errors import TelnyxError, TelnyxRefused, TelnyxUnavailable
from worker.events import apply_pending
from worker.services import Services
from worker.store import Store
from worker.telnyx.messages import ENDPOINTS

log = logging.getLogger(__name__)

#: Telnyx's refusal for a recipient who texted STOP: the message ends `suppressed`, not `rejected`.
OPTED_OUT = "40300"
SKIPPED = "skipped"


def send_one(services: Services, message_id: str, *, last_try: bool) -> str:
    """Send ``message_id`` if it is still ``queued``; returns the status it reached (or ``skipped``).

    Raises :class:`TelnyxUnavailable` after putting the message back to ``queued`` (or ``failed`` when
    ``last_try``), so the job queue retries it later with backoff.
    """
    store = services.store
    row = store.claim(message_id)
    if row is None:
        if store.expire(message_id):
            metrics.MESSAGES.labels(statuses.EXPIRED, *_labels(store, message_id)).inc()
            return statuses.EXPIRED
        return SKIPPED
    try:
        data = services.telnyx.messages.send(row["endpoint"], row["body"], idempotency_key=row["id"])
        telnyx_id = str(data["id"])
    except TelnyxRefused as exc:
        status = statuses.SUPPRESSED if OPTED_OUT in exc.codes else statuses.REJECTED
        return _finish(services, row, status, exc)
    except TelnyxUnavailable as exc:
        _finish(services, row, statuses.FAILED if last_try else statuses.QUEUED, exc)
        raise
    except (KeyError, TypeError) as exc:
        unavailable = TelnyxUnavailable(f"Telnyx accepted the request without an id: {exc!r}", ambiguous=True)
        _finish(services, row, statuses.FAILED if last_try else statuses.QUEUED, unavailable)
        raise unavailable from exc

    # Telnyx-side scheduling answers with a message Telnyx holds until send_at: it stays `scheduled`.
    status = statuses.SCHEDULED if row["endpoint"] == ENDPOINTS["schedule"] else statuses.SUBMITTED
    store.transition(message_id, status, from_=[statuses.SENDING],
                     values={"telnyx_id": telnyx_id, "parts": data.get("parts"), "cost": data.get("cost")})
    metrics.MESSAGES.labels(status, row["kind"], row["priority"]).inc()
    apply_pending(store, message_id, telnyx_id)
    return status


def _labels(store: Store, message_id: str) -> tuple[str, str]:
    row = store.row(message_id)
    return row["kind"], row["priority"]


def _finish(services: Services, row: dict, status: str, exc: TelnyxError) -> str:
    log.warning("send %s: %s -> %s", row["id"], exc, status)
    services.store.transition(row["id"], status, from_=[statuses.SENDING],
                              add_errors=[e.as_dict() for e in exc.errors] or
                              [{"code": None, "title": "request failed", "detail": str(exc)}])
    metrics.MESSAGES.labels(status, row["kind"], row["priority"]).inc()
    for code in exc.codes:
        metrics.TELNYX_ERRORS.labels(code).inc()
    return status
