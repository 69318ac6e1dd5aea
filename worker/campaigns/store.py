"""A campaign in the store: its statuses, and every statement on ``campaigns`` and ``campaign_recipients``
(creation, ingestion, the expander's lease and pages, pause, resume, cancel, the counters' reads)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from worker import statuses
from worker.broker import JOB_TIME_LIMIT_MS
from worker.errors import NotFoundError
from worker.store import NamedRow, campaign_counts, campaign_recipients, campaigns, history, messages, new_id, utcnow
from worker.store.engine import dialect_insert
from worker.suppressions import Suppressions

if TYPE_CHECKING:
    import psycopg

SCHEDULED, RUNNING, PAUSED, CANCELLED, COMPLETED = "scheduled", "running", "paused", "cancelled", "completed"
ACTIVE = (SCHEDULED, RUNNING)
FINAL = (CANCELLED, COMPLETED)
LEASE_S = JOB_TIME_LIMIT_MS / 1000
EARLY_S = 0.5
#: A paused campaign's queued messages are due at no time: the scheduler must not take them for lost.
NEVER = datetime(9999, 1, 1, tzinfo=UTC)
#: The recent send rate counts the campaign's messages submitted this many seconds back.
RATE_WINDOW_S = 10
NOT_FINAL = (statuses.SCHEDULED, statuses.QUEUED, statuses.SENDING, statuses.SUBMITTED, statuses.SENT)
_IDS = uuid.UUID("5e7d9c1a-2b1f-4d6e-9a53-0c4f1b2e8d77")
#: A campaign's counters summed over their shards (see worker.store.campaign_counts).
_COUNTS = (sa.select(campaign_counts.c.status, sa.func.sum(campaign_counts.c.n))
           .where(campaign_counts.c.campaign_id == sa.bindparam("campaign_id")).group_by(campaign_counts.c.status))


def message_id(campaign_id: str, seq: int) -> str:
    """The id of a recipient's message: the same for every expander that creates it."""
    return str(uuid.uuid5(_IDS, f"{campaign_id}:{seq}"))


def _insert_ignoring_duplicates(conn: Connection, table: sa.Table, rows: list[dict[str, Any]],
                                returning: list[sa.Column[Any]]) -> list[sa.Row[Any]]:
    """Insert ``rows``, skipping any a unique key already holds; returns what was inserted."""
    if not rows:
        return []
    statement = dialect_insert(conn.dialect.name, table).on_conflict_do_nothing().returning(*returning)
    return list(conn.execute(statement, rows))


def _copy_recipients(conn: Connection, campaign_id: str, rows: list[dict[str, Any]]) -> int:
    """PostgreSQL: COPY the batch into a temporary table, then insert what is new. COPY streams rows without
    a statement per row or bind parameters to build, three times the rate of a multi-row INSERT here."""
    if not rows:
        return 0
    # psycopg's connection: SQLAlchemy types the driver's connection as Any (or None once closed).
    raw = cast("psycopg.Connection[Any]", conn.connection.driver_connection)
    with raw.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE IF NOT EXISTS sendq_recipients_in (seq integer, phone text, sender text, "
                       "text text) ON COMMIT DELETE ROWS")
        with cursor.copy("COPY sendq_recipients_in (seq, phone, sender, text) FROM STDIN") as copy:
            for row in rows:
                copy.write_row((row["seq"], row["phone"], row["sender"], row["text"]))
        # Ordered by seq, so of two rows with one phone the first in the file is the one kept.
        cursor.execute("INSERT INTO campaign_recipients (campaign_id, seq, phone, sender, text) "
                       "SELECT %s, seq, phone, sender, text FROM sendq_recipients_in ORDER BY seq "
                       "ON CONFLICT DO NOTHING", (campaign_id,))
        return cursor.rowcount


class Campaigns:
    """The campaigns and their recipients in the store."""

    def __init__(self, engine: Engine, reader: Engine | None = None) -> None:
        self.engine = engine
        self.reader = reader or engine

    # -- creation ----------------------------------------------------------------------------------------

    def insert(self, *, name: str | None, kind: str, endpoint: str, body: Mapping[str, Any], senders: list[str],
               messaging_profile_id: str | None, template: str, send_at: datetime | None, valid_for_s: int | None,
               rate_cap: float | None) -> dict[str, Any]:
        now = utcnow()
        row = {
            "id": new_id(), "name": name, "status": SCHEDULED if send_at and send_at > now else RUNNING,
            "kind": kind, "endpoint": endpoint, "body": dict(body), "senders": senders,
            "messaging_profile_id": messaging_profile_id, "template": template, "send_at": send_at,
            "valid_for_s": valid_for_s, "rate_cap": rate_cap, "credit": 0.0, "credit_at": now, "rows_read": 0,
            "rows_invalid": 0, "duplicates": 0, "recipients": 0, "ingested": False, "expanded_through": 0,
            "expanded": 0, "next_run_at": now, "created_at": now, "updated_at": now,
        }
        with self.engine.begin() as conn:
            conn.execute(campaigns.insert().values(**row))
        return row

    def add_recipients(self, campaign_id: str, rows: list[dict[str, Any]], *, read: int, invalid: int) -> int:
        """Store a batch of good rows (``seq``, ``phone``, ``sender``, ``text``); returns how many were new
        (the rest were duplicates of earlier rows). The counters move in the same transaction."""
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                inserted = _copy_recipients(conn, campaign_id, rows)
            else:
                inserted = len(_insert_ignoring_duplicates(
                    conn, campaign_recipients, [{"campaign_id": campaign_id, **r} for r in rows],
                    [campaign_recipients.c.seq]))
            conn.execute(campaigns.update().where(campaigns.c.id == campaign_id).values(
                rows_read=campaigns.c.rows_read + read, rows_invalid=campaigns.c.rows_invalid + invalid,
                duplicates=campaigns.c.duplicates + len(rows) - inserted,
                recipients=campaigns.c.recipients + inserted, updated_at=utcnow()))
        return inserted

    def finish_ingest(self, campaign_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(campaigns.update().where(campaigns.c.id == campaign_id)
                         .values(ingested=True, updated_at=utcnow()))

    # -- reading -----------------------------------------------------------------------------------------

    def get(self, campaign_id: str) -> dict[str, Any]:
        with self.reader.connect() as conn:
            found = conn.execute(campaigns.select().where(campaigns.c.id == campaign_id)).mappings().first()
        if found is None:
            raise NotFoundError(f"no campaign with id {campaign_id!r}")
        return dict(found)

    def counts(self, campaign_id: str) -> dict[str, int]:
        """Messages of the campaign by status, from the counters the store's triggers keep (a few dozen rows,
        however large the campaign). Statuses no message is in are left out, as a count of the messages would."""
        with self.reader.connect() as conn:
            return {status: int(n) for status, n in conn.execute(_COUNTS, {"campaign_id": campaign_id}) if n}

    def recent_rate(self, campaign_id: str, window_s: int = RATE_WINDOW_S) -> float:
        """Messages of the campaign handed to Telnyx per second over the last ``window_s`` seconds.

        The campaign of each recent entry is looked up by primary key (a correlated subquery, which PostgreSQL
        does not turn into a join): as a join, a campaign the statistics do not know yet is estimated at one
        message, and the planner scans all of the campaign's messages once per recent entry (bench/campaign_rate.py:
        130 ms for a campaign of 2,700 messages, and growing with the product of the two).
        """
        campaign_of = sa.select(messages.c.campaign_id).where(messages.c.id == history.c.message_id).scalar_subquery()
        query = (sa.select(sa.func.count()).select_from(history)
                 .where(history.c.status == statuses.SUBMITTED, history.c.at > utcnow() - timedelta(seconds=window_s),
                        campaign_of == campaign_id))
        with self.reader.connect() as conn:
            return (conn.execute(query).scalar() or 0) / window_s

    def ids(self, statuses_: Iterable[str] = ACTIVE) -> list[str]:
        with self.reader.connect() as conn:
            return list(conn.execute(sa.select(campaigns.c.id).where(campaigns.c.status.in_(list(statuses_))))
                        .scalars())

    # -- control -----------------------------------------------------------------------------------------

    def _set_status(self, conn: Connection, campaign_id: str, to: str, from_: Iterable[str]) -> bool:
        moved = conn.execute(campaigns.update()
                             .where(campaigns.c.id == campaign_id, campaigns.c.status.in_(list(from_)))
                             .values(status=to, updated_at=utcnow(),
                                     completed_at=utcnow() if to in FINAL else None)).rowcount
        return moved == 1

    def pause(self, campaign_id: str) -> bool:
        """Stop the campaign: its queued messages are taken from their jobs in the same transaction, so no job
        can claim one after this returns (a send already claimed finishes). False if it was not active."""
        with self.engine.begin() as conn:
            if not self._set_status(conn, campaign_id, PAUSED, ACTIVE):
                return False
            conn.execute(messages.update()
                         .where(messages.c.campaign_id == campaign_id, messages.c.status == statuses.QUEUED)
                         .values(job_gen=sa.func.coalesce(messages.c.job_gen, 0) + 1, job_due_at=NEVER))
        return True

    def resume(self, campaign_id: str) -> list[str]:
        """Make a paused campaign active again; returns its queued messages, which the caller hands to jobs."""
        with self.engine.begin() as conn:
            row = conn.execute(campaigns.select().where(campaigns.c.id == campaign_id)).mappings().first()
            if row is None:
                raise NotFoundError(f"no campaign with id {campaign_id!r}")
            to = SCHEDULED if row["send_at"] and row["send_at"] > utcnow() else RUNNING
            if not self._set_status(conn, campaign_id, to, [PAUSED]):
                return []
            conn.execute(campaigns.update().where(campaigns.c.id == campaign_id)
                         .values(next_run_at=utcnow(), credit_at=utcnow()))
            return list(conn.execute(sa.select(messages.c.id).where(
                messages.c.campaign_id == campaign_id, messages.c.status == statuses.QUEUED)).scalars())

    def cancel(self, campaign_id: str) -> bool:
        """Finalize the campaign: every message not yet handed to Telnyx becomes ``cancelled``. False when it
        was already final (another cancel, or completion, got there first)."""
        now = utcnow()
        with self.engine.begin() as conn:
            if not self._set_status(conn, campaign_id, CANCELLED, (*ACTIVE, PAUSED)):
                return False
            conn.execute(messages.update()
                         .where(messages.c.campaign_id == campaign_id,
                                messages.c.status.in_([statuses.QUEUED, statuses.SCHEDULED]))
                         .values(status=statuses.CANCELLED, status_at=now, updated_at=now))
        return True

    def start_due(self) -> list[str]:
        """``scheduled`` -> ``running`` for campaigns whose ``send_at`` has come; returns their ids."""
        now = utcnow()
        with self.engine.begin() as conn:
            ids = list(conn.execute(sa.select(campaigns.c.id).where(
                campaigns.c.status == SCHEDULED, campaigns.c.send_at <= now)).scalars())
            if ids:
                conn.execute(campaigns.update().where(campaigns.c.id.in_(ids), campaigns.c.status == SCHEDULED)
                             .values(status=RUNNING, next_run_at=now, credit_at=now, updated_at=now))
        return ids

    def stalled(self, older_than: datetime) -> list[str]:
        """Running campaigns whose expander should have run before ``older_than`` (its job was lost), marked
        due now so the next look does not find them again while their new job waits in the queue."""
        with self.engine.begin() as conn:
            return list(conn.execute(campaigns.update()
                                     .where(campaigns.c.status == RUNNING, campaigns.c.next_run_at < older_than)
                                     .values(next_run_at=utcnow()).returning(campaigns.c.id)).scalars())

    def claim(self, campaign_id: str) -> dict[str, Any] | None:
        """Take the expander's lease if the campaign is running and its next run is due (duplicates do nothing)."""
        now = utcnow()
        with self.engine.begin() as conn:
            moved = conn.execute(campaigns.update().where(
                campaigns.c.id == campaign_id, campaigns.c.status == RUNNING,
                sa.or_(campaigns.c.next_run_at.is_(None), campaigns.c.next_run_at <= now + timedelta(seconds=EARLY_S)))
                .values(next_run_at=now + timedelta(seconds=LEASE_S))).rowcount
            if moved != 1:
                return None
            return dict(conn.execute(campaigns.select().where(campaigns.c.id == campaign_id)).mappings().one())

    def release(self, campaign_id: str, delay_s: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(campaigns.update().where(campaigns.c.id == campaign_id)
                         .values(next_run_at=utcnow() + timedelta(seconds=delay_s)))

    # -- expansion ---------------------------------------------------------------------------------------

    def expand(self, campaign: Mapping[str, Any], count: int) -> tuple[int, list[str]]:
        """Create the messages of the next ``count`` recipients; returns how many recipients were taken and
        the ids of the messages to enqueue (not those suppressed on creation).

        Idempotent: ids come from (campaign, seq), and the cursor only moves from where this call found it.
        """
        with self.reader.connect() as conn:
            page = list(conn.execute(
                sa.select(campaign_recipients.c.seq, campaign_recipients.c.phone, campaign_recipients.c.sender,
                          campaign_recipients.c.text)
                .where(campaign_recipients.c.campaign_id == campaign["id"],
                       campaign_recipients.c.seq > campaign["expanded_through"])
                .order_by(campaign_recipients.c.seq).limit(count)).mappings())
        if not page:
            return 0, []
        blocked = self._suppressed(campaign, page)
        rows = [self._message(campaign, r, r["phone"] in blocked) for r in page]
        with self.engine.begin() as conn:
            created = _insert_ignoring_duplicates(conn, messages, rows, [messages.c.id, messages.c.status])
            moved = conn.execute(campaigns.update().where(
                campaigns.c.id == campaign["id"], campaigns.c.expanded_through == campaign["expanded_through"])
                .values(expanded_through=page[-1]["seq"], expanded=campaigns.c.expanded + len(page),
                        updated_at=utcnow())).rowcount
        return (len(page) if moved else 0), [r.id for r in created if r.status == statuses.QUEUED]

    def _suppressed(self, campaign: Mapping[str, Any], page: Sequence[NamedRow]) -> set[str]:
        """Recipients of ``page`` on the suppression list for their sender or the campaign's profile."""
        by_sender: dict[str | None, list[str]] = {}
        for recipient in page:
            by_sender.setdefault(recipient["sender"], []).append(recipient["phone"])
        book = Suppressions(self.engine, self.reader)
        return {phone for sender, phones in by_sender.items()
                for phone in book.suppressed(phones, sender=sender, profile=campaign["messaging_profile_id"])}

    @staticmethod
    def _message(campaign: Mapping[str, Any], recipient: NamedRow, suppressed: bool) -> dict[str, Any]:
        now = utcnow()
        body = {**campaign["body"], "to": recipient["phone"]}
        if recipient["sender"]:
            body["from"] = recipient["sender"]
        if recipient["text"] is not None:
            body["text"] = recipient["text"]
        valid_for = campaign["valid_for_s"]
        return {
            "id": message_id(campaign["id"], recipient["seq"]), "idempotency_key": None, "kind": campaign["kind"],
            "priority": "bulk", "sender": recipient["sender"], "messaging_profile_id": campaign["messaging_profile_id"],
            "recipients": [recipient["phone"]], "recipient_statuses": None, "endpoint": campaign["endpoint"],
            "body": body, "status": statuses.SUPPRESSED if suppressed else statuses.QUEUED, "status_at": now,
            "telnyx_id": None, "attempts": 0,
            "errors": [{"code": "sendq.suppressed", "title": "Recipient opted out",
                        "detail": "on the suppression list when the campaign reached it"}] if suppressed else [],
            "parts": None, "cost": None, "send_at": None,
            "valid_until": now + timedelta(seconds=valid_for) if valid_for else None,
            "job_gen": 0, "job_due_at": now, "campaign_id": campaign["id"], "created_at": now, "updated_at": now,
        }

    def outstanding(self, campaign_id: str) -> int:
        """Messages of the campaign waiting for a send slot (the expander keeps these near its window)."""
        return self._counted(campaign_id, [statuses.QUEUED])

    def unfinished(self, campaign_id: str) -> int:
        """Messages of the campaign not in a final status: the campaign completes when none are left."""
        return self._counted(campaign_id, NOT_FINAL)

    def _counted(self, campaign_id: str, in_statuses: Iterable[str]) -> int:
        query = (sa.select(sa.func.coalesce(sa.func.sum(campaign_counts.c.n), 0))
                 .where(campaign_counts.c.campaign_id == campaign_id, campaign_counts.c.status.in_(list(in_statuses))))
        with self.reader.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def complete(self, campaign_id: str) -> bool:
        with self.engine.begin() as conn:
            return self._set_status(conn, campaign_id, COMPLETED, [RUNNING])

    def spend_credit(self, campaign: Mapping[str, Any], created: int, credit: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(campaigns.update().where(campaigns.c.id == campaign["id"])
                         .values(credit=max(0.0, credit - created), credit_at=utcnow()))
