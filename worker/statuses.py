"""The status vocabulary of a message and the one rule that orders it.

A message only moves to a status of higher rank, and never out of a final status. Every status change in
the store is a conditional UPDATE built from :func:`lower_than`, so the rule holds however many workers,
duplicate jobs and reordered webhooks race for the same row.
"""

from __future__ import annotations

QUEUED = "queued"
SCHEDULED = "scheduled"
SENDING = "sending"
SUBMITTED = "submitted"
SENT = "sent"

DELIVERED = "delivered"
DELIVERY_FAILED = "delivery_failed"
DELIVERY_UNCONFIRMED = "delivery_unconfirmed"
SENDING_FAILED = "sending_failed"
EXPIRED = "expired"
CANCELLED = "cancelled"
SUPPRESSED = "suppressed"
REJECTED = "rejected"
FAILED = "failed"

#: Telnyx's own final statuses, as they appear in ``message.finalized`` (``to[].status``).
TELNYX_FINAL = frozenset({DELIVERED, DELIVERY_FAILED, DELIVERY_UNCONFIRMED, SENDING_FAILED, EXPIRED})
FINAL = TELNYX_FINAL | {CANCELLED, SUPPRESSED, REJECTED, FAILED}

RANK: dict[str, int] = {
    QUEUED: 0,
    SCHEDULED: 0,
    SENDING: 1,
    SUBMITTED: 2,
    SENT: 3,
    **{status: 4 for status in FINAL},
}

ALL = frozenset(RANK)


def lower_than(status: str) -> frozenset[str]:
    """The statuses a message may be in for a move to ``status`` to be allowed."""
    return frozenset(s for s, rank in RANK.items() if rank < RANK[status])


def is_final(status: str) -> bool:
    return status in FINAL
