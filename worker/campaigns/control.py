"""What is done to a campaign from outside its expander: its progress record, pause, resume and cancel.

Producers (the Python API, the CLI, the HTTP API) call these and enqueue the :class:`Work` they return through
:meth:`worker.actors.Actors.enqueue_campaign_work`; the expander returns the same :class:`Work`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from worker import statuses
from worker.campaigns.pacing import effective_rate
from worker.campaigns.store import ACTIVE, CANCELLED, PAUSED, RUNNING, Campaigns
from worker.errors import ConflictError
from worker.store import utcnow

if TYPE_CHECKING:
    from worker.hooks import Hooks
    from worker.limiter import Limiter
    from worker.store import Store


@dataclass(frozen=True)
class Work:
    """What a campaign step leaves to enqueue once its changes are stored: the send jobs of its ``queued``
    messages, as :meth:`worker.actors.Actors.enqueue_owned` takes them, and the delay before the expander's next
    tick (None: no tick, the campaign is done or not running)."""

    sends: list[tuple[str, str, int | None, int | None]] = field(default_factory=list)
    expand_in_s: float | None = None


def record(store: Store, campaign_id: str, limiter: Limiter | None) -> dict[str, Any]:
    """The campaign's progress (:func:`progress`); raises NotFoundError for an unknown id."""
    book = Campaigns(store.engine, store.reader)
    return progress(book, book.get(campaign_id), limiter)


def pause(store: Store, campaign_id: str) -> None:
    """Stop a campaign's sends; a message already handed to a worker's send finishes. Raises ConflictError
    unless the campaign is scheduled or running."""
    book = Campaigns(store.engine, store.reader)
    check_control(book.get(campaign_id), "pause")
    book.pause(campaign_id)


def resume(store: Store, campaign_id: str) -> Work:
    """Make a paused campaign active again where it stopped: new jobs for its queued messages, and its expander
    restarted if it is running (not waiting for its ``send_at``). Raises ConflictError unless it is paused."""
    book = Campaigns(store.engine, store.reader)
    check_control(book.get(campaign_id), "resume")
    sends: list[tuple[str, str, int | None, int | None]] = []
    for message_id in book.resume(campaign_id):
        generation = store.next_job(message_id, after=None, due_at=utcnow())
        if generation is not None:
            sends.append((message_id, "bulk", generation, None))
    return Work(sends, 0.0 if book.get(campaign_id)["status"] == RUNNING else None)


def cancel(store: Store, campaign_id: str, limiter: Limiter | None, hooks: Hooks) -> dict[str, Any]:
    """Finalize a campaign: whatever is not yet handed to Telnyx ends ``cancelled``. Returns its progress, which
    goes to the status hook when this call finished the campaign. Raises ConflictError once it is final."""
    book = Campaigns(store.engine, store.reader)
    check_control(book.get(campaign_id), "cancel")
    finished_here = book.cancel(campaign_id)
    found = progress(book, book.get(campaign_id), limiter)
    if finished_here:
        hooks.campaign_finished(found)
    return found


def progress(book: Campaigns, campaign: Mapping[str, Any], limiter: Limiter | None) -> dict[str, Any]:
    """A campaign's record as ``sendq campaign status`` shows it.

    ``messages`` counts by status; ``not_created`` are recipients the expander has not reached yet (counted as
    ``cancelled`` once the campaign is). ``eta_s`` is the time the rest takes at the current limits.
    """
    counts = book.counts(campaign["id"])
    not_created = max(0, campaign["recipients"] - campaign["expanded"])
    if campaign["status"] == CANCELLED and not_created:
        counts[statuses.CANCELLED] = counts.get(statuses.CANCELLED, 0) + not_created
        not_created = 0
    final = sum(n for status, n in counts.items() if statuses.is_final(status))
    to_send = not_created + sum(counts.get(s, 0) for s in (statuses.QUEUED, statuses.SENDING))
    rate = effective_rate(limiter, campaign)
    eta = to_send / rate if rate and campaign["status"] in ACTIVE else None
    return {
        "id": campaign["id"], "name": campaign["name"], "status": campaign["status"],
        "rows_read": campaign["rows_read"], "rows_invalid": campaign["rows_invalid"],
        "duplicates": campaign["duplicates"], "recipients": campaign["recipients"],
        "ingested": campaign["ingested"], "not_created": not_created, "messages": dict(sorted(counts.items())),
        "final": final, "to_send": to_send,
        "send_rate": round(book.recent_rate(campaign["id"]), 2), "limit_rate": rate,
        "eta_s": round(eta, 1) if eta is not None else None, "rate_cap": campaign["rate_cap"],
        "send_at": _iso(campaign["send_at"]), "created_at": _iso(campaign["created_at"]),
        "completed_at": _iso(campaign["completed_at"]),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def check_control(campaign: Mapping[str, Any], action: str) -> None:
    """Refuse a control action that cannot apply to the campaign's status, naming it."""
    allowed = {"pause": ACTIVE, "resume": (PAUSED,), "cancel": (*ACTIVE, PAUSED)}[action]
    if campaign["status"] not in allowed:
        raise ConflictError(f"campaign {campaign['id']} is {campaign['status']}: cannot {action} it",
                            status=campaign["status"])
