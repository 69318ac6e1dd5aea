"""Bulk messaging-profile updates of phone numbers: a durable job over ``POST /messaging_numbers_bulk_updates``.

A bulk update is a row in ``bulk_updates`` before its job is enqueued (the same outbox as messages). The job
posts the numbers to Telnyx in chunks, persisting each order id right after its POST (a restart resumes at
the next chunk and never posts one twice), then polls the open orders with growing delays until nothing is
pending. Between polls the state is in the table and the next poll is a delayed message in Redis, so a worker
restart loses nothing; ``sendq scheduler`` re-enqueues an update whose job was lost.

``next_run_at`` keeps one chain of jobs per update: a job claims the row only when it is due, holding it for
:data:`LEASE_S`; a duplicate job (the scheduler's, or a redelivery) that arrives early does nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from worker.broker import JOB_TIME_LIMIT_MS
from worker.errors import NotFoundError, TelnyxRefused, ValidationError
from worker.sms import is_e164
from worker.store import bulk_updates, new_id, utcnow

if TYPE_CHECKING:
    from worker.services import Services

log = logging.getLogger(__name__)

#: Delay before the first poll of Telnyx's orders; it doubles after every poll that still finds numbers pending.
FIRST_POLL_DELAY_S = 1.0
#: The longest wait between two polls (Telnyx settles big orders in minutes, not hours).
MAX_POLL_DELAY_S = 60.0
#: Chunks one job posts before handing over to a fresh job, so a job stays well inside the time limit.
MAX_POSTS_PER_RUN = 10
#: How long a running job holds its update against duplicates; a killed job's hold lapses after this.
LEASE_S = JOB_TIME_LIMIT_MS / 1000
#: A job may claim this much before its due time (the due time and the message's eta come from one clock,
#: up to millisecond rounding).
EARLY_S = 0.5

QUEUED, SUBMITTED, COMPLETED, FAILED = "queued", "submitted", "completed", "failed"
ACTIVE = (QUEUED, SUBMITTED)
# ``\Z``, not ``$``: ``$`` also matches before a trailing newline.
PROFILE_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")



def check_request(profile_id: Any, numbers: Any, assign_only: Any = False) -> tuple[str, list[str], bool]:
    """The validated ``(profile, numbers, assign_only)`` of a bulk update; raises ValidationError naming the field.

    ``profile`` is a messaging profile UUID, or exactly ``""`` to unassign (as Telnyx allows). Numbers must be
    written exactly in E.164 form (:func:`worker.sms.e164`: no spaces, no other scripts' digits); duplicates are
    dropped, first occurrence kept.
    """
    if not isinstance(profile_id, str) or not (profile_id == "" or PROFILE_UUID.match(profile_id)):
        raise ValidationError("profile", f'must be a messaging profile UUID, or "" to unassign (got {profile_id!r})')
    try:
        listed = [numbers] if isinstance(numbers, str) else list(numbers or ())
    except TypeError:
        raise ValidationError("numbers", f"must be a list of E.164 numbers (got {numbers!r})") from None
    if not listed:
        raise ValidationError("numbers", "at least one phone number is needed")
    for number in listed:
        if not isinstance(number, str) or not is_e164(number):
            raise ValidationError("numbers", f"must be phone numbers in E.164 form like +13125550123 (got {number!r})")
    if not isinstance(assign_only, bool):
        raise ValidationError("assign_only", f"must be true or false (got {assign_only!r})")
    return profile_id, list(dict.fromkeys(listed)), assign_only


def poll_delay(polls: int) -> float:
    """Seconds before the next poll after ``polls`` polls: 1, 2, 4, ... capped at :data:`MAX_POLL_DELAY_S`."""
    delay: float = min(MAX_POLL_DELAY_S, FIRST_POLL_DELAY_S * 2 ** min(polls, 16))  # int ** int is typed Any
    return delay


def merge(numbers: Sequence[str], current: Mapping[str, Any], views: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``success``/``pending``/``failed`` lists of ``current`` updated by Telnyx order ``views`` (a later
    view wins), in the order the numbers were given."""
    state = {n: key for key in ("success", "pending", "failed") for n in current[key]}
    for view in views:
        for key in ("success", "pending", "failed"):
            state.update(dict.fromkeys(view.get(key) or (), key))
    position = {n: i for i, n in enumerate(numbers)}
    ordered = sorted(state, key=lambda n: position.get(n, len(position)))
    return {key: [n for n in ordered if state[n] == key] for key in ("success", "pending", "failed")}


class BulkUpdates:
    """The ``bulk_updates`` table: insert, read, claim and advance one update at a time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def insert(self, profile_id: str, numbers: list[str], assign_only: bool) -> dict[str, Any]:
        now = utcnow()
        row = {"id": new_id(), "messaging_profile_id": profile_id, "numbers": numbers, "assign_only": assign_only,
               "status": QUEUED, "posted": 0, "order_ids": [], "open_orders": [], "success": [], "pending": [],
               "failed": [], "polls": 0, "errors": [], "next_run_at": None, "created_at": now, "updated_at": now}
        with self.engine.begin() as conn:
            conn.execute(bulk_updates.insert().values(**row))
        return row

    def get(self, bulk_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            found = conn.execute(bulk_updates.select().where(bulk_updates.c.id == bulk_id)).mappings().first()
        if found is None:
            raise NotFoundError(f"no message or bulk update with id {bulk_id!r}")
        return dict(found)

    def record(self, bulk_id: str) -> dict[str, Any]:
        """The update as CONTRACT.md shows it; ``pending`` also counts numbers not posted yet, so
        ``success + pending + failed_numbers`` are all the numbers."""
        row = self.get(bulk_id)
        return {
            "id": row["id"], "record_type": "bulk_update", "status": row["status"],
            "messaging_profile_id": row["messaging_profile_id"], "assign_only": row["assign_only"],
            "order_id": row["order_ids"][0] if row["order_ids"] else None, "order_ids": row["order_ids"],
            "success": row["success"], "pending": row["pending"] + row["numbers"][row["posted"]:],
            "failed_numbers": row["failed"], "polls": row["polls"], "errors": row["errors"],
            "created_at": row["created_at"].isoformat(), "updated_at": row["updated_at"].isoformat(),
        }

    def claim(self, bulk_id: str) -> dict[str, Any] | None:
        """Hold an active, due update for :data:`LEASE_S`; None when it is finished, unknown, not due yet or
        held by another job."""
        now = utcnow()
        next_run = bulk_updates.c.next_run_at
        due = sa.or_(next_run.is_(None), next_run <= now + timedelta(seconds=EARLY_S))
        with self.engine.begin() as conn:
            claimed = conn.execute(
                bulk_updates.update()
                .where(bulk_updates.c.id == bulk_id, bulk_updates.c.status.in_(ACTIVE), due)
                .values(next_run_at=now + timedelta(seconds=LEASE_S), updated_at=now)
            ).rowcount
        return self.get(bulk_id) if claimed == 1 else None

    def save(self, row: dict[str, Any], **values: Any) -> dict[str, Any]:
        """Write ``values`` to the update (the caller holds its claim); returns the row with them."""
        values["updated_at"] = utcnow()
        with self.engine.begin() as conn:
            conn.execute(bulk_updates.update().where(bulk_updates.c.id == row["id"]).values(**values))
        return {**row, **values}

    def stale(self, older_than: datetime, limit: int = 1000) -> list[str]:
        """Ids of active updates nobody touched since ``older_than`` (their job may be lost), oldest first."""
        query = (sa.select(bulk_updates.c.id)
                 .where(bulk_updates.c.status.in_(ACTIVE), bulk_updates.c.updated_at < older_than)
                 .order_by(bulk_updates.c.updated_at).limit(limit))
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def touch(self, bulk_id: str, older_than: datetime) -> bool:
        """Mark a stale update as seen; False when someone else did first (so only one scheduler requeues it)."""
        with self.engine.begin() as conn:
            return conn.execute(
                bulk_updates.update()
                .where(bulk_updates.c.id == bulk_id, bulk_updates.c.status.in_(ACTIVE),
                       bulk_updates.c.updated_at < older_than)
                .values(updated_at=utcnow())
            ).rowcount == 1


def run_bulk_update(services: Services, bulk_id: str) -> float | None:
    """Advance one bulk update: post the next chunks, or poll its open orders.

    Returns the delay in seconds before the job should run again, or None when there is nothing more to do
    (finished, or another job holds the update). Transient Telnyx errors (:class:`TelnyxUnavailable`) raise,
    so dramatiq retries the job; a refusal marks the update ``failed`` with Telnyx's errors.
    """
    updates = BulkUpdates(services.store.engine)
    row = updates.claim(bulk_id)
    if row is None:
        return None
    try:
        return _advance(services, updates, row)
    except TelnyxRefused as exc:
        log.warning("bulk update %s refused by Telnyx: %s", bulk_id, exc)
        errors = [e.as_dict() for e in exc.errors] or [{"code": None, "title": "request refused", "detail": str(exc)}]
        updates.save(row, status=FAILED, errors=row["errors"] + errors, next_run_at=None)
        return None
    except BaseException:
        updates.save(row, next_run_at=None)  # let the retry run as soon as dramatiq sends it
        raise


def _advance(services: Services, updates: BulkUpdates, row: dict[str, Any]) -> float | None:
    if row["posted"] < len(row["numbers"]):
        row = _post_chunks(services, updates, row)
    elif row["open_orders"]:
        row = _poll(services, updates, row)
    if row["posted"] < len(row["numbers"]):
        delay = 0.0
    elif not row["open_orders"]:
        updates.save(row, status=COMPLETED, next_run_at=None)
        return None
    else:
        delay = poll_delay(row["polls"])
    updates.save(row, next_run_at=utcnow() + timedelta(seconds=delay))
    return delay


def _post_chunks(services: Services, updates: BulkUpdates, row: dict[str, Any]) -> dict[str, Any]:
    size = services.settings.bulk_chunk_size
    for _ in range(MAX_POSTS_PER_RUN):
        chunk = row["numbers"][row["posted"]:row["posted"] + size]
        if not chunk:
            break
        order = services.telnyx.numbers.create_bulk_update(
            messaging_profile_id=row["messaging_profile_id"], numbers=chunk, assign_only=row["assign_only"] or None)
        lists = merge(row["numbers"], row, [order])
        still_open = [order["order_id"]] if order.get("pending") else []
        row = updates.save(row, status=SUBMITTED, posted=row["posted"] + len(chunk),
                           order_ids=[*row["order_ids"], order["order_id"]],
                           open_orders=[*row["open_orders"], *still_open], **lists,
                           next_run_at=utcnow() + timedelta(seconds=LEASE_S))
    return row


def _poll(services: Services, updates: BulkUpdates, row: dict[str, Any]) -> dict[str, Any]:
    views = {order_id: services.telnyx.numbers.retrieve_bulk_update(order_id) for order_id in row["open_orders"]}
    still_open = [order_id for order_id, view in views.items() if view.get("pending")]
    return updates.save(row, open_orders=still_open, polls=row["polls"] + 1,
                        **merge(row["numbers"], row, list(views.values())))
