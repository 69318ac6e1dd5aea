"""Campaigns: one template to many recipients, stored in batches and expanded into messages at the senders' pace.

A campaign is a row in ``campaigns`` and its recipients are rows in ``campaign_recipients``, each validated and
rendered once, while the producer streams them in (duplicates fall to a unique key). Nothing else happens at
creation: an expander job (:func:`expand_campaign`) turns recipients into ``messages`` rows and jobs a page at
a time, keeping each campaign's backlog of ``queued`` messages near a window of a few seconds of its senders'
rate. That keeps Redis small for a million recipients and shares a sender fairly: campaigns on the same
sender each keep the same window in one FIFO queue, so each gets an equal part of its rate, and urgent
messages (another queue, the limiter's urgent share) still go first.

Message ids are derived from (campaign, recipient), so an expander that runs twice for the same page inserts
nothing twice. Pausing takes the queued messages away from their jobs (the job number moves on, so a job that
wakes up cannot claim them); resuming hands them to new jobs and restarts the expander where it stopped.
Cancelling finalizes every message not yet handed to Telnyx as ``cancelled``; recipients never expanded are
counted as cancelled too.
"""

from __future__ import annotations

import logging
import math
import string
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from worker import sms, statuses
from worker.broker import JOB_TIME_LIMIT_MS
from worker.errors import ConflictError, NotFoundError, ValidationError
from worker.limits import keys_for
from worker.store import campaign_counts, campaign_recipients, campaigns, history, messages, new_id, utcnow
from worker.suppressions import Suppressions

if TYPE_CHECKING:
    from worker.actors import Actors
    from worker.limiter import Limiter
    from worker.services import Services

log = logging.getLogger(__name__)

SCHEDULED, RUNNING, PAUSED, CANCELLED, COMPLETED = "scheduled", "running", "paused", "cancelled", "completed"
ACTIVE = (SCHEDULED, RUNNING)
FINAL = (CANCELLED, COMPLETED)
#: Seconds of the senders' rate each campaign keeps queued: enough to keep them busy between expander ticks.
WINDOW_S = 3.0
MIN_WINDOW = 20
MAX_PAGE = 2000
TICK_S = 0.5
#: Between ticks once every recipient has its message and only webhooks are awaited.
DRAIN_TICK_S = 2.0
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


class Template:
    """A message template with ``{name}`` fields, filled from each recipient's columns.

    Only plain names are allowed: ``{0}``, ``{a.b}``, ``{a[0]}`` and format specs would let a CSV reach into
    Python objects or fail in ways a row error cannot name.
    """

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ValidationError("template", "a campaign needs a template text")
        self.text = text
        self.fields: list[str] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ValidationError("template", f"not a valid template: {exc} (write {{{{ and }}}} for braces)") \
                from None
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if not name.isidentifier() or spec or conversion:
                raise ValidationError("template", f"fields are plain names like {{first_name}} (got {{{name}}})")
            self.fields.append(name)

    def render(self, values: Mapping[str, Any]) -> str:
        """The text for one recipient; raises KeyError naming the first missing (or empty) variable."""
        found = {}
        for name in self.fields:
            value = values.get(name)
            if value is None or value == "":
                raise KeyError(name)
            found[name] = value
        return self.text.format_map(found)


@dataclass(frozen=True)
class RowError:
    line: int
    phone: str
    field: str
    error: str


def check_row(template: Template, row: Mapping[str, Any], *, phone_column: str, has_media: bool,
              line: int) -> tuple[str, str] | RowError:
    """``(phone, text)`` of a good row, or what is wrong with it."""
    phone = str(row.get(phone_column) or "").strip()
    if not sms.is_e164(phone):
        return RowError(line, phone, phone_column, f"not an E.164 number like +13125550123 ({phone!r})")
    try:
        text = template.render(row)
    except KeyError as exc:
        return RowError(line, phone, "template", f"no value for {{{exc.args[0]}}}")
    if not text.strip() and not has_media:
        return RowError(line, phone, "template", "renders to an empty message")
    # 330 characters fit 10 parts in any encoding: only longer texts need counting.
    if len(text) > 330 and not has_media and sms.segments(text).parts > sms.MAX_PARTS:
        return RowError(line, phone, "template", f"renders to {sms.segments(text).parts} SMS parts; "
                                                 f"Telnyx allows {sms.MAX_PARTS}")
    return phone, text


def _insert_ignoring_duplicates(conn: Connection, table: sa.Table, rows: list[dict[str, Any]],
                                returning: list[sa.Column[Any]]) -> list[sa.Row[Any]]:
    """Insert ``rows``, skipping any a unique key already holds; returns what was inserted."""
    if not rows:
        return []
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return list(conn.execute(insert(table).on_conflict_do_nothing().returning(*returning), rows))


def _copy_recipients(conn: Connection, campaign_id: str, rows: list[dict[str, Any]]) -> int:
    """PostgreSQL: COPY the batch into a temporary table, then insert what is new. COPY streams rows without
    a statement per row or bind parameters to build, three times the rate of a multi-row INSERT here."""
    if not rows:
        return 0
    raw = conn.connection.driver_connection
    with raw.cursor() as cursor:  # type: ignore[union-attr]
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

    def _suppressed(self, campaign: Mapping[str, Any], page: list[Mapping[str, Any]]) -> set[str]:
        """Recipients of ``page`` on the suppression list for their sender or the campaign's profile."""
        by_sender: dict[str | None, list[str]] = {}
        for recipient in page:
            by_sender.setdefault(recipient["sender"], []).append(recipient["phone"])
        book = Suppressions(self.engine, self.reader)
        return {phone for sender, phones in by_sender.items()
                for phone in book.suppressed(phones, sender=sender, profile=campaign["messaging_profile_id"])}

    @staticmethod
    def _message(campaign: Mapping[str, Any], recipient: Mapping[str, Any], suppressed: bool) -> dict[str, Any]:
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


def senders_rate(limiter: Limiter | None, campaign: Mapping[str, Any]) -> float | None:
    """Messages per second the campaign's senders allow together (None without a limiter: unbounded)."""
    if limiter is None:
        return None
    mms = bool(campaign["body"].get("media_urls"))
    total, account = 0.0, math.inf
    for sender in campaign["senders"] or [None]:
        keys = keys_for(campaign["kind"], sender, campaign["messaging_profile_id"], mms=mms)
        if keys is None:
            return None  # WhatsApp is not metered here
        sender_rate, account_rate = limiter.rates(keys)
        total += sender_rate.mps
        account = account_rate.mps
    return min(total, account)


def effective_rate(limiter: Limiter | None, campaign: Mapping[str, Any]) -> float | None:
    """The campaign's pace at the current limits: its senders' rate, or its cap if lower."""
    rate = senders_rate(limiter, campaign)
    cap = campaign["rate_cap"]
    if cap is not None:
        rate = cap if rate is None else min(rate, cap)
    return rate


def plan_page(campaign: Mapping[str, Any], rate: float | None, outstanding: int) -> tuple[int, float]:
    """How many messages to create now, and the rate cap's credit left before creating them."""
    window = MIN_WINDOW if rate is None else max(MIN_WINDOW, math.ceil(rate * WINDOW_S))
    count = min(MAX_PAGE, window - outstanding)
    credit = math.inf
    if campaign["rate_cap"] is not None:
        elapsed = (utcnow() - (campaign["credit_at"] or utcnow())).total_seconds()
        # The bucket holds at most a window's worth, so a pause or a slow tick does not turn into a burst.
        credit = min(campaign["credit"] + campaign["rate_cap"] * max(0.0, elapsed),
                     max(1.0, campaign["rate_cap"] * WINDOW_S))
        count = min(count, int(credit))
    return max(0, count), credit


def expand_campaign(services: Services, actors: Actors, campaign_id: str) -> float | None:
    """One tick of a campaign's expander; returns the delay until the next tick, or None when it is done."""
    book = Campaigns(services.store.engine, services.store.reader)
    campaign = book.claim(campaign_id)
    if campaign is None:
        return None  # not running (paused, cancelled, completed), or another expander job holds it
    rate = effective_rate(services.limiter, campaign)
    count, credit = plan_page(campaign, rate, book.outstanding(campaign_id))
    taken, created = book.expand(campaign, count) if count else (0, [])
    actors.enqueue_owned(services.store, [(created_id, "bulk", 0, None) for created_id in created])
    if campaign["rate_cap"] is not None and count:
        book.spend_credit(campaign, len(created), credit)
    everything_expanded = campaign["ingested"] and campaign["expanded"] + taken >= campaign["recipients"]
    if everything_expanded and book.unfinished(campaign_id) == 0:
        if book.complete(campaign_id):
            log.info("campaign %s completed", campaign_id)
            services.hooks.campaign_finished(progress(book, book.get(campaign_id), services.limiter))
        return None
    delay = DRAIN_TICK_S if everything_expanded else TICK_S
    book.release(campaign_id, delay)
    return delay


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
