"""Messages: the statements that store one, move it through its statuses, and find the ones the scheduler
must look after.

Every status change is one conditional UPDATE that follows :mod:`worker.statuses` (a trigger records it in
``message_history`` within the same statement). The send path's statements are built once and do in one round
trip what took several: the claim refuses a superseded, expired or suppressed message; recording Telnyx's answer
also tells whether events about the message were parked before its id was known.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from worker import statuses
from worker.errors import NotFoundError
from worker.store.schema import events, history, messages, new_id, suppressions, utcnow

#: Extra tests a status change can require, by name, evaluated at the change's own ``_now``.
CONDITIONS: dict[str, sa.ColumnElement[bool]] = {
    "still_valid": sa.or_(messages.c.valid_until.is_(None), messages.c.valid_until > sa.bindparam("_now")),
    "past_validity": messages.c.valid_until <= sa.bindparam("_now"),
}
#: A claim by job ``_gen``: still owned by that job (a paused campaign's messages were taken from theirs).
CONDITIONS["owned_and_valid"] = sa.and_(CONDITIONS["still_valid"],
                                        sa.func.coalesce(messages.c.job_gen, 0) == sa.bindparam("_gen"))
#: What a status change hands back: enough to send the message (a whole row costs more to describe than to fetch).
_MOVED_COLUMNS = [messages.c[name] for name in ("id", "status", "kind", "priority", "endpoint", "body", "sender",
                                                  "messaging_profile_id", "recipients", "attempts", "valid_until",
                                                  "send_at", "telnyx_id", "job_gen", "created_at")]
_JOB_GEN = sa.func.coalesce(messages.c.job_gen, 0)
#: Hand a ``queued`` message to a new job, if it is still owned by job ``_after`` (any job when that is null).
_NEXT_JOB = (messages.update()
             .where(messages.c.id == sa.bindparam("_id"), messages.c.status == statuses.QUEUED,
                    sa.or_(sa.bindparam("_after", type_=sa.Integer).is_(None), sa.bindparam("_after") == _JOB_GEN))
             .values(job_gen=_JOB_GEN + 1, job_due_at=sa.bindparam("_due"))
             .returning(messages.c.job_gen))
#: ``job_due_at`` of a ``queued`` message whose enqueue failed (Redis down): the scheduler's next look for lost jobs
#: picks it before any other, so it is sent within a tick of Redis answering again, not ``requeue_after_s`` later.
ENQUEUE_PENDING = datetime(1970, 1, 1, tzinfo=UTC)
#: ``job_due_at`` of a message that must not be sent by any job (a paused campaign's): never taken for lost.
NEVER_DUE = datetime(9999, 1, 1, tzinfo=UTC)
#: The enqueue of job ``_gen`` failed: mark the message pending, unless it moved on (another job, another status).
_ENQUEUE_FAILED = (messages.update()
                   .where(messages.c.id == sa.bindparam("_id"), messages.c.status == statuses.QUEUED,
                          sa.or_(sa.bindparam("_gen", type_=sa.Integer).is_(None), sa.bindparam("_gen") == _JOB_GEN))
                   .values(job_due_at=ENQUEUE_PENDING))
_ROW_SELECT = messages.select().where(messages.c.id == sa.bindparam("_id"))


@functools.lru_cache(maxsize=512)
def _move_statement(to: str, allowed: frozenset[str], value_keys: tuple[str, ...], condition: str | None,
                    attempt_delta: int) -> sa.Update:
    """The UPDATE for one kind of status change, built once: building SQLAlchemy expressions per call cost
    more CPU than running them."""
    tests = [messages.c.id == sa.bindparam("_id"), messages.c.status.in_(sorted(allowed))]
    if condition is not None:
        tests.append(CONDITIONS[condition])
    values: dict[str, Any] = {key: sa.bindparam(key) for key in value_keys}
    if attempt_delta:
        values["attempts"] = messages.c.attempts + attempt_delta
    return (messages.update().where(*tests)
            .values(status=to, status_at=sa.bindparam("_at"), updated_at=sa.bindparam("_now"), **values)
            .returning(*_MOVED_COLUMNS))


def _recipients_of_message(dialect: str) -> sa.Select[Any]:
    """The elements of the row's ``recipients`` JSON array, as a subquery correlated to the UPDATE's row."""
    elements = sa.func.json_array_elements_text if dialect == "postgresql" else sa.func.json_each
    return sa.select(elements(messages.c.recipients).table_valued("value").c.value)


@functools.lru_cache(maxsize=8)
def _claim_statement(dialect: str, owned: bool) -> sa.Update:
    """``queued`` -> ``sending`` in one statement that also refuses an expired message, one taken over by another
    job (with ``owned``) and one to a recipient on the suppression list (the rule of
    :meth:`worker.suppressions.Suppressions.suppressed`): a send starts with one round trip."""
    blocked = sa.exists().where(
        suppressions.c.recipient.in_(_recipients_of_message(dialect)),
        sa.or_(suppressions.c.scope == messages.c.messaging_profile_id, suppressions.c.scope == messages.c.sender,
               suppressions.c.number == messages.c.sender))
    return (messages.update()
            .where(messages.c.id == sa.bindparam("_id"), messages.c.status == statuses.QUEUED,
                   CONDITIONS["owned_and_valid" if owned else "still_valid"], ~blocked)
            .values(status=statuses.SENDING, status_at=sa.bindparam("_now"), updated_at=sa.bindparam("_now"),
                    attempts=messages.c.attempts + 1, claimed_by=sa.bindparam("_job"))
            .returning(*_MOVED_COLUMNS))


#: Telnyx took a claimed message: record its id and what it said, and tell whether events about it were parked
#: before the id was known (they are applied then), in one statement.
_ACCEPTED = (messages.update()
             .where(messages.c.id == sa.bindparam("_id"), messages.c.status == statuses.SENDING)
             .values(status=sa.bindparam("_to"), status_at=sa.bindparam("_now"), updated_at=sa.bindparam("_now"),
                     telnyx_id=sa.bindparam("_telnyx_id"), parts=sa.bindparam("_parts"),
                     cost=sa.bindparam("_cost", type_=sa.JSON))
             .returning(messages.c.id, messages.c.status, messages.c.kind, messages.c.priority,
                        sa.exists().where(events.c.telnyx_id == sa.bindparam("_telnyx_id"),
                                          events.c.applied_at.is_(None)).label("parked")))

#: A claimed message given back to the queue (a deferral): the attempt returned, and the message handed to a new
#: job due at ``_due`` in the same statement.
_RELEASED = (messages.update()
             .where(messages.c.id == sa.bindparam("_id"), messages.c.status == statuses.SENDING)
             .values(status=statuses.QUEUED, status_at=sa.bindparam("_now"), updated_at=sa.bindparam("_now"),
                     attempts=messages.c.attempts - 1, job_gen=_JOB_GEN + 1, job_due_at=sa.bindparam("_due"))
             .returning(messages.c.job_gen))


@dataclass(frozen=True)
class NewMessage:
    """A validated message, ready to be stored. Built by the producer."""

    kind: str
    priority: str
    recipients: list[str]
    endpoint: str
    body: dict[str, Any]
    sender: str | None = None
    messaging_profile_id: str | None = None
    idempotency_key: str | None = None
    status: str = statuses.QUEUED
    send_at: datetime | None = None
    valid_until: datetime | None = None
    id: str = field(default_factory=new_id)

    def same_request(self, row: Mapping[str, Any]) -> bool:
        """Whether a stored row was made from the same request (idempotency keys must not be reused)."""
        return (row["kind"], row["priority"], row["body"]) == (self.kind, self.priority, self.body)


class MessageRecords:
    """The message methods of :class:`worker.store.Store`."""

    engine: Engine
    #: Single-statement reads and changes go through an autocommit pool: no BEGIN and COMMIT round trips.
    reader: Engine

    def insert(self, new: NewMessage) -> tuple[dict[str, Any], bool]:
        """Store ``new``; returns ``(row, created)``.

        With an idempotency key already in the store, nothing is written and the existing row comes back
        with ``created=False``: the caller decides whether the two requests match.
        """
        now = utcnow()
        row = {
            "id": new.id, "idempotency_key": new.idempotency_key, "kind": new.kind,
            "priority": new.priority, "sender": new.sender, "messaging_profile_id": new.messaging_profile_id,
            "recipients": new.recipients, "endpoint": new.endpoint, "body": new.body, "status": new.status,
            "attempts": 0, "errors": [], "send_at": new.send_at, "valid_until": new.valid_until,
            "job_gen": 0, "job_due_at": now if new.status == statuses.QUEUED else None,
            "status_at": now, "created_at": now, "updated_at": now,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(messages.insert().values(**row))
        except sa.exc.IntegrityError:
            if new.idempotency_key is None:
                raise
            existing = self.row_by_idempotency_key(new.idempotency_key)
            if existing is None:
                raise
            return existing, False
        return row, True

    def row(self, message_id: str) -> dict[str, Any]:
        with self.reader.connect() as conn:
            found = conn.execute(_ROW_SELECT, {"_id": message_id}).mappings().first()
        if found is None:
            raise NotFoundError(f"no message with id {message_id!r}")
        return dict(found)

    def row_by_idempotency_key(self, key: str) -> dict[str, Any] | None:
        with self.reader.connect() as conn:
            found = conn.execute(messages.select().where(messages.c.idempotency_key == key)).mappings().first()
        return dict(found) if found else None

    def history(self, message_id: str) -> list[dict[str, Any]]:
        query = sa.select(history.c.status, history.c.at).where(history.c.message_id == message_id)
        with self.reader.connect() as conn:
            return [dict(r) for r in conn.execute(query.order_by(history.c.seq)).mappings()]

    def record(self, message_id: str) -> dict[str, Any]:
        """The message as CONTRACT.md shows it (``sendq status --json``)."""
        row = self.row(message_id)
        recipients = row["recipients"]
        return {
            "id": row["id"],
            "status": row["status"],
            "to": recipients[0] if len(recipients) == 1 else recipients,
            "from": row["sender"],
            "messaging_profile_id": row["messaging_profile_id"],
            "kind": row["kind"],
            "priority": row["priority"],
            "idempotency_key": row["idempotency_key"],
            "telnyx_id": row["telnyx_id"],
            "recipient_statuses": row["recipient_statuses"],
            "attempts": row["attempts"],
            "errors": row["errors"],
            "parts": row["parts"],
            "cost": row["cost"],
            "send_at": _iso(row["send_at"]),
            "valid_until": _iso(row["valid_until"]),
            "created_at": _iso(row["created_at"]),
            "updated_at": _iso(row["updated_at"]),
            "history": [{"status": h["status"], "at": _iso(h["at"])} for h in self.history(message_id)],
        }

    def transition(
        self,
        message_id: str,
        to: str,
        *,
        from_: Iterable[str] | None = None,
        at: datetime | None = None,
        values: Mapping[str, Any] | None = None,
        add_errors: Iterable[Mapping[str, Any]] = (),
        condition: str | None = None,
        attempt_delta: int = 0,
    ) -> bool:
        """Move a message to ``to`` if it is in one of ``from_`` (default: any status of lower rank).

        One conditional UPDATE decides (``condition`` names an extra test from :data:`CONDITIONS`); ``values``
        and ``add_errors`` are written with it and the history row in the same transaction; ``attempt_delta``
        corrects the attempt count (a claim that turned out to be throttling gives its attempt back). Returns
        whether this call made the move.
        """
        return self.move(message_id, to, from_=from_, at=at, values=values, add_errors=add_errors,
                         condition=condition, attempt_delta=attempt_delta) is not None

    def move(self, message_id: str, to: str, *, from_: Iterable[str] | None = None, at: datetime | None = None,
             values: Mapping[str, Any] | None = None, add_errors: Iterable[Mapping[str, Any]] = (),
             condition: str | None = None, attempt_delta: int = 0,
             generation: int | None = None) -> dict[str, Any] | None:
        """:meth:`transition`, returning the moved row (see ``_MOVED_COLUMNS``) or None. ``generation`` is the
        job number the ``owned_and_valid`` condition compares with."""
        add_errors = list(add_errors)
        # Without errors to merge the change is one statement: autocommit makes it one round trip.
        connection = self.engine.begin() if add_errors else self.reader.connect()
        with connection as conn:
            return self._move(conn, message_id, to, from_=from_, at=at, values=values, add_errors=add_errors,
                              condition=condition, attempt_delta=attempt_delta, generation=generation)

    def _move(self, conn: Connection, message_id: str, to: str, *, from_: Iterable[str] | None = None,
              at: datetime | None = None, values: Mapping[str, Any] | None = None,
              add_errors: Iterable[Mapping[str, Any]] = (), condition: str | None = None,
              attempt_delta: int = 0, generation: int | None = None) -> dict[str, Any] | None:
        """The conditional UPDATE behind every status change; the moved row, or None if it did not move."""
        allowed = statuses.lower_than(to) if from_ is None else frozenset(from_)
        values = dict(values or {})
        statement = _move_statement(to, allowed, tuple(sorted(values)), condition, attempt_delta)
        now = utcnow()
        params = {"_id": message_id, "_now": now, "_at": at or now, "_gen": generation, **values}
        moved = conn.execute(statement, params).mappings().first()
        if moved is None:
            return None
        extra = [dict(e) for e in add_errors]
        if extra:
            self._append_errors(conn, message_id, extra)
        return dict(moved)

    @staticmethod
    def _append_errors(conn: Connection, message_id: str, extra: list[dict[str, Any]]) -> None:
        # Read-modify-write is safe here: the caller's UPDATE already holds the row lock.
        current = conn.execute(sa.select(messages.c.errors).where(messages.c.id == message_id)).scalar()
        conn.execute(messages.update().where(messages.c.id == message_id).values(errors=[*(current or []), *extra]))

    def claim(self, message_id: str, generation: int | None = None, job: str | None = None) -> dict[str, Any] | None:
        """``queued`` -> ``sending``, counting the attempt, unless the message is no longer valid, a recipient is
        suppressed for its sender or profile, or (with ``generation``) another job owns it. One statement.

        ``job`` is the broker's id of the claiming job, kept in ``claimed_by``. Returns the moved row
        (``_MOVED_COLUMNS``) or None; :meth:`row` then tells why.
        """
        statement = _claim_statement(self.engine.dialect.name, generation is not None)
        with self.reader.connect() as conn:
            moved = conn.execute(statement, {"_id": message_id, "_now": utcnow(), "_gen": generation, "_job": job})
            found = moved.mappings().first()
        return dict(found) if found else None

    def accepted(self, message_id: str, to: str, *, telnyx_id: str, parts: Any, cost: Any) -> dict[str, Any] | None:
        """``sending`` -> ``to`` (``submitted``, or ``scheduled`` at Telnyx) with Telnyx's id, parts and cost.

        Returns ``id``, ``status``, ``kind``, ``priority`` and ``parked`` (whether events for ``telnyx_id`` wait
        to be applied), or None when the message was not ``sending``.
        """
        params = {"_id": message_id, "_to": to, "_now": utcnow(), "_telnyx_id": telnyx_id,
                  "_parts": parts if isinstance(parts, int) else None, "_cost": cost}
        with self.reader.connect() as conn:
            found = conn.execute(_ACCEPTED, params).mappings().first()
        return dict(found) if found else None

    def release(self, message_id: str, *, due_at: datetime,
                add_errors: Iterable[Mapping[str, Any]] = ()) -> int | None:
        """Give a claimed (``sending``) message back to the queue without spending its attempt, handed to a new
        job due at ``due_at``; returns that job's number, or None when the message was not ``sending``."""
        extra = [dict(e) for e in add_errors]
        with (self.engine.begin() if extra else self.reader.connect()) as conn:
            generation = conn.execute(_RELEASED, {"_id": message_id, "_now": utcnow(), "_due": due_at}).scalar()
            if generation is not None and extra:
                self._append_errors(conn, message_id, extra)
        return generation

    def promote_due(self, until: datetime, limit: int = 5000) -> list[dict[str, Any]]:
        """``scheduled`` -> ``queued`` for locally scheduled messages due by ``until``; returns those moved.

        The UPDATE re-checks the status, so two schedulers promoting at once never move a message twice.
        """
        now = utcnow()
        due = (sa.select(messages.c.id)
               .where(messages.c.status == statuses.SCHEDULED, messages.c.telnyx_id.is_(None),
                      messages.c.send_at <= until)
               .order_by(messages.c.send_at).limit(limit))
        with self.engine.begin() as conn:
            ids = list(conn.execute(due).scalars())
            if not ids:
                return []
            moved = [dict(r) for r in conn.execute(
                messages.update()
                .where(messages.c.id.in_(ids), messages.c.status == statuses.SCHEDULED)
                .values(status=statuses.QUEUED, status_at=now, updated_at=now, job_gen=_JOB_GEN + 1,
                        job_due_at=messages.c.send_at)
                .returning(messages.c.id, messages.c.priority, messages.c.send_at, messages.c.job_gen)
            ).mappings()]
        return moved

    def stale(self, status: str, older_than: datetime, limit: int = 1000) -> list[str]:
        """Ids of messages in ``status`` not updated since ``older_than``, oldest first."""
        query = (
            sa.select(messages.c.id)
            .where(messages.c.status == status, messages.c.updated_at < older_than)
            .order_by(messages.c.updated_at)
            .limit(limit)
        )
        with self.reader.connect() as conn:
            return list(conn.execute(query).scalars())

    def lost_jobs(self, due_before: datetime, limit: int = 1000) -> list[dict[str, Any]]:
        """``queued`` messages whose job should have run before ``due_before``: ``id``, ``priority``, ``job_gen``."""
        overdue = sa.or_(messages.c.job_due_at < due_before,
                         sa.and_(messages.c.job_due_at.is_(None), messages.c.updated_at < due_before))
        query = (sa.select(messages.c.id, messages.c.priority, messages.c.job_gen)
                 .where(messages.c.status == statuses.QUEUED, overdue)
                 .order_by(messages.c.job_due_at).limit(limit))
        with self.reader.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def next_job(self, message_id: str, *, after: int | None, due_at: datetime) -> int | None:
        """Hand a ``queued`` message over to a new job due by ``due_at``; returns the new job's number.

        None when the message is no longer ``queued``, or (with ``after``) another hand-over got there first:
        the caller must then not enqueue, so one message never has two live jobs.
        """
        with self.reader.connect() as conn:
            return conn.execute(_NEXT_JOB, {"_id": message_id, "_after": after, "_due": due_at}).scalar()

    def enqueue_failed(self, jobs: Iterable[tuple[str, int | None]]) -> None:
        """Record that the enqueue of each ``(message id, job number)`` failed, so the scheduler's next tick after
        Redis answers re-enqueues those messages first (:data:`ENQUEUE_PENDING`). A message that moved on since
        (claimed, cancelled, handed to another job) is left alone."""
        params = [{"_id": message_id, "_gen": generation} for message_id, generation in jobs]
        if params:
            with self.reader.connect() as conn:
                conn.execute(_ENQUEUE_FAILED, params)

    def requeue_all(self) -> int:
        """Mark every ``queued`` message's job as lost (Redis lost its data): the scheduler re-enqueues them all,
        from the next tick. Messages no job may take (a paused campaign's) are left alone. Returns how many."""
        statement = (messages.update()
                     .where(messages.c.status == statuses.QUEUED,
                            sa.or_(messages.c.job_due_at.is_(None), messages.c.job_due_at < NEVER_DUE))
                     .values(job_due_at=ENQUEUE_PENDING))
        with self.engine.begin() as conn:
            return conn.execute(statement).rowcount or 0

    def touch(self, message_id: str, status: str) -> bool:
        """Mark a message as seen without changing its status (so it is not picked as stale again)."""
        with self.engine.begin() as conn:
            return conn.execute(
                messages.update()
                .where(messages.c.id == message_id, messages.c.status == status)
                .values(updated_at=utcnow())
            ).rowcount == 1


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None

