"""The outcome store: the system of record for every message (SQLAlchemy Core).

SQLite by default, PostgreSQL through psycopg 3 in production. A message row is written before its job is
enqueued (a transactional outbox): a job lost in Redis is found again from here, and a duplicate job finds
the row already claimed. Every status change is a conditional UPDATE that follows :mod:`worker.statuses`;
a trigger records it in ``message_history`` within the same statement.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from worker import statuses
from worker.errors import NotFoundError


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite would hand back naive ones)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("idempotency_key", sa.String(255), unique=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("priority", sa.String(10), nullable=False),
    sa.Column("sender", sa.String(64)),
    sa.Column("messaging_profile_id", sa.String(64)),
    sa.Column("recipients", sa.JSON, nullable=False),
    #: Per-recipient status of a group MMS ({number: status}); the message's status is derived from it.
    sa.Column("recipient_statuses", sa.JSON),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("body", sa.JSON, nullable=False),
    sa.Column("status", sa.String(24), nullable=False, index=True),
    #: When the current status was reached, as history should show it (a webhook's occurred_at, say); the
    #: history trigger copies it.
    sa.Column("status_at", UTCDateTime),
    sa.Column("telnyx_id", sa.String(64), unique=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("errors", sa.JSON, nullable=False, default=list),
    sa.Column("parts", sa.Integer),
    sa.Column("cost", sa.JSON),
    sa.Column("send_at", UTCDateTime),
    sa.Column("valid_until", UTCDateTime),
    #: Which job owns a ``queued`` message: every hand-over to a new job (a deferral, a re-enqueue) counts it up,
    #: and a job carrying an older number stops before it takes a rate slot. Null in rows of older sendqs.
    sa.Column("job_gen", sa.Integer),
    #: When the owning job should run at the latest; the scheduler re-enqueues a ``queued`` message whose job
    #: is ``requeue_after_s`` past this (the job was lost), not one merely waiting for a far-off rate slot.
    sa.Column("job_due_at", UTCDateTime),
    #: The broker's id of the job (dramatiq message) whose claim made the message ``sending``: the same job,
    #: delivered again after its worker died, takes the send over (see :mod:`worker.sending`).
    sa.Column("claimed_by", sa.String(64)),
    #: The campaign the message belongs to (see :mod:`worker.campaigns`), null for single sends.
    sa.Column("campaign_id", sa.String(36)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_messages_status_updated", "status", "updated_at"),
    sa.Index("ix_messages_status_job_due", "status", "job_due_at"),
    sa.Index("ix_messages_campaign_status", "campaign_id", "status"),
    sa.Index("ix_messages_status_send_at", "status", "send_at"),
)

history = sa.Table(
    "message_history",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("message_id", sa.String(36), sa.ForeignKey("messages.id"), nullable=False, index=True),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    #: A campaign's recent send rate counts its ``submitted`` entries of the last seconds.
    sa.Index("ix_history_status_at", "status", "at"),
)

#: Every verified Telnyx event, keyed by its id: the durable dedupe, and the parking place of events that
#: arrive before the send recorded the telnyx id they refer to.
events = sa.Table(
    "events",
    metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("telnyx_id", sa.String(64), index=True),
    sa.Column("occurred_at", UTCDateTime),
    sa.Column("body", sa.JSON, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("applied_at", UTCDateTime),
    #: The scheduler's sweep for parked events whose message became known (see Store.parked_known): partial,
    #: so it holds only events not applied yet and stays small however many events the table keeps.
    sa.Index("ix_events_parked", "received_at", postgresql_where=sa.text("applied_at IS NULL"),
             sqlite_where=sa.text("applied_at IS NULL")),
)


bulk_updates = sa.Table(
    "bulk_updates",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    #: A UUID, or "" to unassign the numbers from any profile.
    sa.Column("messaging_profile_id", sa.String(64), nullable=False),
    sa.Column("numbers", sa.JSON, nullable=False),
    sa.Column("assign_only", sa.Boolean, nullable=False, default=False),
    sa.Column("status", sa.String(16), nullable=False),
    #: How many of ``numbers`` (from the start) have been posted; the next chunk starts here.
    sa.Column("posted", sa.Integer, nullable=False, default=0),
    #: One Telnyx order per chunk posted, in posting order.
    sa.Column("order_ids", sa.JSON, nullable=False, default=list),
    #: Orders that still had pending numbers at the last look: the ones the next poll asks about.
    sa.Column("open_orders", sa.JSON, nullable=False, default=list),
    #: Telnyx's lists, merged over every order.
    sa.Column("success", sa.JSON, nullable=False, default=list),
    sa.Column("pending", sa.JSON, nullable=False, default=list),
    sa.Column("failed", sa.JSON, nullable=False, default=list),
    sa.Column("polls", sa.Integer, nullable=False, default=0),
    sa.Column("errors", sa.JSON, nullable=False, default=list),
    #: No job may run before this: the lease of a running job, or the due time of the next poll.
    sa.Column("next_run_at", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False, index=True),
)


#: Recipients sendq never sends to from a scope: a messaging profile id, or a sender (number, short code, ID).
#: Filled by STOP keywords, Telnyx's 40300 refusals, the opt-out sync and operators (see worker.suppressions).
suppressions = sa.Table(
    "suppressions",
    metadata,
    sa.Column("recipient", sa.String(64), primary_key=True),
    sa.Column("scope", sa.String(64), primary_key=True),
    #: The profile the block belongs to when known (equal to ``scope`` for a profile-wide block).
    sa.Column("messaging_profile_id", sa.String(64)),
    #: The sender number the block was learned on (the number that received the STOP, or that was refused).
    sa.Column("number", sa.String(64)),
    #: stop_keyword, telnyx_40300, telnyx_sync or manual.
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("keyword", sa.String(32)),
    #: When the opt-out happened (Telnyx's time where Telnyx says): a later START undoes it, an earlier one not.
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_suppressions_scope", "scope"),
)

#: Messages recipients sent to our numbers (``message.received``), once each by Telnyx message id.
inbound_messages = sa.Table(
    "inbound_messages",
    metadata,
    sa.Column("telnyx_id", sa.String(64), primary_key=True),
    sa.Column("from_number", sa.String(64), nullable=False),
    sa.Column("to_number", sa.String(64)),
    sa.Column("text", sa.Text),
    sa.Column("messaging_profile_id", sa.String(64)),
    #: The opt-out or opt-in keyword the text is (``stop``, ``start``, ...), else null.
    sa.Column("keyword", sa.String(32)),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("body", sa.JSON, nullable=False),
    sa.Index("ix_inbound_from_received", "from_number", "received_at"),
)

#: Clicks on links Telnyx shortened in our messages (``link_clicked`` webhooks), against the message.
link_clicks = sa.Table(
    "link_clicks",
    metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    #: sendq's message id; null when the click names a message sendq does not know.
    sa.Column("message_id", sa.String(36), index=True),
    sa.Column("telnyx_message_id", sa.String(64), nullable=False),
    sa.Column("recipient", sa.String(64)),
    sa.Column("url", sa.Text),
    sa.Column("clicked_at", UTCDateTime),
    sa.Column("body", sa.JSON, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
)

#: Small named values that must outlive Redis: the opt-out sync's high-water mark.
sync_state = sa.Table(
    "sync_state",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255)),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)


#: A campaign: one template sent to many recipients, expanded into messages at the senders' pace.
campaigns = sa.Table(
    "campaigns",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(200)),
    #: ingesting (recipients still being stored; sending may already run), scheduled, running, paused,
    #: cancelled, completed.
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("endpoint", sa.String(64), nullable=False),
    #: The message body without ``to``, ``from`` and ``text``, which each recipient fills in.
    sa.Column("body", sa.JSON, nullable=False),
    sa.Column("senders", sa.JSON, nullable=False),
    sa.Column("messaging_profile_id", sa.String(64)),
    sa.Column("template", sa.Text, nullable=False),
    sa.Column("send_at", UTCDateTime),
    sa.Column("valid_for_s", sa.Integer),
    #: Messages per second at most, below what the senders allow; null for the senders' own pace.
    sa.Column("rate_cap", sa.Float),
    #: Messages the expander may still create under ``rate_cap`` (a token bucket), as of ``credit_at``.
    sa.Column("credit", sa.Float, nullable=False, default=0.0),
    sa.Column("credit_at", UTCDateTime),
    sa.Column("rows_read", sa.Integer, nullable=False, default=0),
    sa.Column("rows_invalid", sa.Integer, nullable=False, default=0),
    sa.Column("duplicates", sa.Integer, nullable=False, default=0),
    sa.Column("recipients", sa.Integer, nullable=False, default=0),
    #: True once every recipient is stored: the campaign can complete only then.
    sa.Column("ingested", sa.Boolean, nullable=False, default=False),
    #: Recipients up to this ``seq`` have their message.
    sa.Column("expanded_through", sa.Integer, nullable=False, default=0),
    sa.Column("expanded", sa.Integer, nullable=False, default=0),
    #: The lease of a running expander job, or when the next one is due (as for bulk updates).
    sa.Column("next_run_at", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("completed_at", UTCDateTime),
)

#: A campaign's validated recipients, in file order; the text is rendered once, when the row is read.
campaign_recipients = sa.Table(
    "campaign_recipients",
    metadata,
    sa.Column("campaign_id", sa.String(36), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("phone", sa.String(20), nullable=False),
    sa.Column("sender", sa.String(64)),
    sa.Column("text", sa.Text),
    sa.UniqueConstraint("campaign_id", "phone", name="uq_campaign_recipient"),
)


# -- campaign counts ---------------------------------------------------------------------------------------
# A campaign's messages by status, kept up to date by triggers in the statement that changes a status, so
# ``sendq campaign status`` reads a few dozen rows instead of counting the campaign's messages (a GROUP BY over
# 100,000 rows took 300-460 ms in a store of 1,000,000, more when the table is not vacuumed).

#: Counters per (campaign, status), split in ``CAMPAIGN_COUNT_SHARDS`` rows by message id on PostgreSQL: a status
#: change holds its counter row's lock until commit, and workers finishing messages of one campaign at once
#: would otherwise queue on one row. A campaign's count of a status is the sum over its shards.
campaign_counts = sa.Table(
    "campaign_counts",
    metadata,
    sa.Column("campaign_id", sa.String(36), primary_key=True),
    sa.Column("status", sa.String(24), primary_key=True),
    sa.Column("shard", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("n", sa.BigInteger, nullable=False),
)
CAMPAIGN_COUNT_SHARDS = 16
#: The shard of message ``{id}``, per dialect. SQLite has one writer at a time, so splitting buys nothing there.
_COUNT_SHARD = {"postgresql": f"(hashtext({{id}}) & {CAMPAIGN_COUNT_SHARDS - 1})", "sqlite": "0"}
#: The ``sync_state`` row saying the counters were built from the messages once (a store made before them).
COUNTS_BACKFILLED = "campaign_counts.backfilled"


def _count_upsert(dialect: str, row: str, delta: int) -> str:
    """Add ``delta`` to the counter of trigger row ``row`` (NEW or OLD), if the message has a campaign (SQLite's
    row triggers).

    INSERT ... SELECT ... WHERE rather than VALUES: SQLite triggers have no IF, and SQLite needs a WHERE between
    a SELECT and ON CONFLICT."""
    shard = _COUNT_SHARD[dialect].format(id=f"{row}.id")
    return (f"INSERT INTO campaign_counts (campaign_id, status, shard, n) "
            f"SELECT {row}.campaign_id, {row}.status, {shard}, {delta} WHERE {row}.campaign_id IS NOT NULL "
            f"ON CONFLICT (campaign_id, status, shard) DO UPDATE SET n = campaign_counts.n + excluded.n;")


_COUNT_UPSERT_PG = ("INSERT INTO campaign_counts (campaign_id, status, shard, n) {select} "
                    "ON CONFLICT (campaign_id, status, shard) DO UPDATE SET n = campaign_counts.n + excluded.n")
#: The rows of a statement whose campaign or status changed, as -1 on the old counter and +1 on the new one.
_COUNT_CHANGED = "(o.status IS DISTINCT FROM n.status OR o.campaign_id IS DISTINCT FROM n.campaign_id)"
_COUNT_CHANGES_PG = f"""
    SELECT o.campaign_id, o.status, {_COUNT_SHARD["postgresql"].format(id="o.id")} AS shard, -1 AS d
      FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE o.campaign_id IS NOT NULL AND {_COUNT_CHANGED}
    UNION ALL
    SELECT n.campaign_id, n.status, {_COUNT_SHARD["postgresql"].format(id="n.id")}, 1
      FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE n.campaign_id IS NOT NULL AND {_COUNT_CHANGED}"""


def _count_function(name: str, select: str) -> str:
    return (f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger AS $$ BEGIN "
            f"{_COUNT_UPSERT_PG.format(select=select)}; RETURN NULL; END $$ LANGUAGE plpgsql")


# Every statement that creates or moves a campaign's message (a send's claim, a webhook, the expander's multi-row
# INSERT, cancel's UPDATE of many rows, an older sendq's code) moves the counters with it.
#
# PostgreSQL: statement triggers over the statement's transition tables, one upsert per counter the statement
# touches. Row triggers updated a counter row once per message; within one transaction each such update leaves a
# row version that later updates of the same counter must step over (none can be pruned before commit), so a
# statement moving N messages cost O(N^2 / counters): filling the benchmark's store went from 70 s to over 10
# minutes, and cancelling a large campaign would have been as bad. Sorting the upserts also takes the counters'
# row locks in one order, so two bulk statements cannot deadlock on them.
#
# SQLite: row triggers (no transition tables there), filtered by WHEN; an update overwrites in place, so the cost
# stays linear, and single sends and updates that leave the status alone never reach the counters.
CAMPAIGN_COUNT_TRIGGERS = {
    "postgresql": [
        _count_function("sendq_campaign_counts_insert", f"""
            SELECT campaign_id, status, {_COUNT_SHARD["postgresql"].format(id="id")}, count(*) FROM new_rows
             WHERE campaign_id IS NOT NULL GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""),
        _count_function("sendq_campaign_counts_update", f"""
            SELECT campaign_id, status, shard, sum(d) FROM ({_COUNT_CHANGES_PG}) AS changes
             GROUP BY 1, 2, 3 HAVING sum(d) <> 0 ORDER BY 1, 2, 3"""),
        _count_function("sendq_campaign_counts_delete", f"""
            SELECT campaign_id, status, {_COUNT_SHARD["postgresql"].format(id="id")}, -count(*) FROM old_rows
             WHERE campaign_id IS NOT NULL GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""),
        """CREATE OR REPLACE TRIGGER messages_campaign_counts_insert AFTER INSERT ON messages
           REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION sendq_campaign_counts_insert()""",
        # Transition tables rule out ``UPDATE OF status``: the function itself skips rows whose status stayed.
        """CREATE OR REPLACE TRIGGER messages_campaign_counts_update AFTER UPDATE ON messages
           REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
           FOR EACH STATEMENT EXECUTE FUNCTION sendq_campaign_counts_update()""",
        """CREATE OR REPLACE TRIGGER messages_campaign_counts_delete AFTER DELETE ON messages
           REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION sendq_campaign_counts_delete()""",
    ],
    "sqlite": [
        f"""CREATE TRIGGER IF NOT EXISTS messages_campaign_counts_insert AFTER INSERT ON messages
           WHEN NEW.campaign_id IS NOT NULL BEGIN {_count_upsert("sqlite", "NEW", 1)} END""",
        f"""CREATE TRIGGER IF NOT EXISTS messages_campaign_counts_update AFTER UPDATE OF status, campaign_id ON messages
           WHEN OLD.status IS NOT NEW.status OR OLD.campaign_id IS NOT NEW.campaign_id BEGIN
             {_count_upsert("sqlite", "OLD", -1)} {_count_upsert("sqlite", "NEW", 1)} END""",
        f"""CREATE TRIGGER IF NOT EXISTS messages_campaign_counts_delete AFTER DELETE ON messages
           WHEN OLD.campaign_id IS NOT NULL BEGIN {_count_upsert("sqlite", "OLD", -1)} END""",
    ],
}


def install_campaign_counts(conn: Connection) -> None:
    """Install the counters' triggers, and build the counters once from the messages of a store that had none.

    The backfill runs in the transaction that claims the ``sync_state`` marker, after the triggers exist: on
    PostgreSQL, creating a trigger locks out writers to ``messages`` until commit, and on SQLite the marker's
    INSERT takes the write lock; either way no status change falls between the count and the triggers.
    """
    dialect = conn.dialect.name
    for statement in CAMPAIGN_COUNT_TRIGGERS[dialect]:
        conn.execute(sa.text(statement))
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    # RETURNING, not rowcount: SQLAlchemy does not report psycopg's rowcount of an INSERT.
    claimed = conn.execute(insert(sync_state).values(name=COUNTS_BACKFILLED, value="1", updated_at=utcnow())
                           .on_conflict_do_nothing().returning(sync_state.c.name)).first()
    if claimed is None:
        return
    shard = sa.literal_column(_COUNT_SHARD[dialect].format(id="messages.id"))
    # SQLite's shard is the constant 0, which GROUP BY would take for a column number.
    keys = [messages.c.campaign_id, messages.c.status, *([shard] if dialect == "postgresql" else [])]
    conn.execute(campaign_counts.delete())
    conn.execute(campaign_counts.insert().from_select(
        ["campaign_id", "status", "shard", "n"],
        sa.select(messages.c.campaign_id, messages.c.status, shard, sa.func.count())
        .where(messages.c.campaign_id.is_not(None)).group_by(*keys)))

# -- end of campaign counts --------------------------------------------------------------------------------


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
_ROW_SELECT = messages.select().where(messages.c.id == sa.bindparam("_id"))
_ID_BY_TELNYX_ID = sa.select(messages.c.id).where(messages.c.telnyx_id == sa.bindparam("telnyx_id"))
_PENDING_EVENTS = (sa.select(events.c.event_id, events.c.body)
                   .where(events.c.telnyx_id == sa.bindparam("telnyx_id"), events.c.applied_at.is_(None))
                   .order_by(events.c.occurred_at))


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


#: A claim given back (``sending`` -> ``queued`` returning the attempt: the send was deferred, by the limiter,
#: a sender hold or a 429) is not a status change a reader should see: it takes the claim's ``sending`` entry
#: out of the history instead of adding ``queued`` (a 429 stays in the message's errors).
_RELEASE = "OLD.status = 'sending' AND NEW.status = 'queued' AND NEW.attempts < OLD.attempts"
_FORGET_CLAIM = """DELETE FROM message_history WHERE seq = (
             SELECT max(seq) FROM message_history WHERE message_id = NEW.id AND status = 'sending')"""

#: Every status a message takes is appended to message_history by the database itself, in the statement that
#: changes it: one round trip per status change instead of three, and no code path can skip the history.
#: Each statement drops what it replaces first, so an upgraded store gets the current definitions.
HISTORY_TRIGGERS = {
    "postgresql": [
        """CREATE OR REPLACE FUNCTION sendq_message_history() RETURNS trigger AS $$
           BEGIN
             INSERT INTO message_history (message_id, status, at)
             VALUES (NEW.id, NEW.status, COALESCE(NEW.status_at, NEW.updated_at));
             RETURN NULL;
           END $$ LANGUAGE plpgsql""",
        f"""CREATE OR REPLACE FUNCTION sendq_message_history_release() RETURNS trigger AS $$
           BEGIN {_FORGET_CLAIM}; RETURN NULL; END $$ LANGUAGE plpgsql""",
        """CREATE OR REPLACE TRIGGER messages_history_insert AFTER INSERT ON messages
           FOR EACH ROW EXECUTE FUNCTION sendq_message_history()""",
        f"""CREATE OR REPLACE TRIGGER messages_history_update AFTER UPDATE OF status ON messages
           FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NOT ({_RELEASE}))
           EXECUTE FUNCTION sendq_message_history()""",
        f"""CREATE OR REPLACE TRIGGER messages_history_release AFTER UPDATE OF status ON messages
           FOR EACH ROW WHEN ({_RELEASE}) EXECUTE FUNCTION sendq_message_history_release()""",
    ],
    "sqlite": [
        "DROP TRIGGER IF EXISTS messages_history_insert",
        """CREATE TRIGGER messages_history_insert AFTER INSERT ON messages BEGIN
             INSERT INTO message_history (message_id, status, at)
             VALUES (NEW.id, NEW.status, COALESCE(NEW.status_at, NEW.updated_at)); END""",
        "DROP TRIGGER IF EXISTS messages_history_update",
        f"""CREATE TRIGGER messages_history_update AFTER UPDATE OF status ON messages
           WHEN OLD.status IS NOT NEW.status AND NOT ({_RELEASE}) BEGIN
             INSERT INTO message_history (message_id, status, at)
             VALUES (NEW.id, NEW.status, COALESCE(NEW.status_at, NEW.updated_at)); END""",
        "DROP TRIGGER IF EXISTS messages_history_release",
        f"""CREATE TRIGGER messages_history_release AFTER UPDATE OF status ON messages
           WHEN {_RELEASE} BEGIN {_FORGET_CLAIM}; END""",
    ],
}


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
             .returning(*_MOVED_COLUMNS,
                        sa.exists().where(events.c.telnyx_id == sa.bindparam("_telnyx_id"),
                                          events.c.applied_at.is_(None)).label("parked")))

#: A claimed message given back to the queue (a deferral): the attempt returned, and the message handed to a new
#: job due at ``_due`` in the same statement.
_RELEASED = (messages.update()
             .where(messages.c.id == sa.bindparam("_id"), messages.c.status == statuses.SENDING)
             .values(status=statuses.QUEUED, status_at=sa.bindparam("_now"), updated_at=sa.bindparam("_now"),
                     attempts=messages.c.attempts - 1, job_gen=_JOB_GEN + 1, job_due_at=sa.bindparam("_due"))
             .returning(messages.c.job_gen))


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def create_engine(url: str, **options: Any) -> Engine:
    """An engine for ``url``; ``postgresql://`` URLs are routed to psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix):]
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **options)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # No pre-ping: it would cost a round trip per transaction; a connection lost to a database restart fails
    # the job, which is retried.
    return sa.create_engine(url, pool_size=10, max_overflow=20, pool_recycle=1800, **options)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; busy_timeout makes writers queue instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


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


class Store:
    """Messages, their history and Telnyx events in one SQL database."""

    def __init__(self, engine: Engine, reader: Engine | None = None) -> None:
        self.engine = engine
        #: Single-statement reads go through an autocommit pool: no BEGIN and ROLLBACK round trips around them.
        self.reader = reader or engine

    @classmethod
    def from_url(cls, url: str) -> Store:
        """A store on ``url``; nothing is read or written until it is used. The schema is not touched: each
        process brings it up to date once at start (:meth:`migrate`, also ``sendq migrate``)."""
        return cls(create_engine(url), create_engine(url, isolation_level="AUTOCOMMIT"))

    def migrate(self) -> Store:
        """Create missing tables, add columns that a newer sendq added to an existing table, and (re)install the
        triggers; returns the store.

        Schema changes are additive only (new nullable columns), so a store written by an older sendq keeps
        every message and stays readable by a newer one.
        """
        for attempt in range(5):
            try:
                with self.engine.begin() as conn:
                    self._create_schema(conn)
                return self
            except sa.exc.DBAPIError:
                # Processes starting together race to create the same objects; the loser tries again and
                # finds them there.
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def _create_schema(self, conn: Connection) -> None:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7158423)"))  # one schema writer at a time
        metadata.create_all(conn, checkfirst=True)
        inspector = sa.inspect(conn)
        for table in metadata.sorted_tables:
            present = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present:
                    continue
                if not column.nullable:
                    raise RuntimeError(f"cannot add required column {table.name}.{column.name} in place")
                kind = column.type.compile(dialect=conn.dialect)
                conn.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
            indexed = {i["name"] for i in inspector.get_indexes(table.name)}
            for index in table.indexes:
                if index.name not in indexed:
                    index.create(conn)
        for statement in HISTORY_TRIGGERS[conn.dialect.name]:
            conn.execute(sa.text(statement))
        install_campaign_counts(conn)

    def ping(self) -> None:
        with self.reader.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()
        self.reader.dispose()

    # -- messages -------------------------------------------------------------------------------------

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

    def id_by_telnyx_id(self, telnyx_id: str) -> str | None:
        with self.reader.connect() as conn:
            return conn.execute(_ID_BY_TELNYX_ID, {"telnyx_id": telnyx_id}).scalar()

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

    def add_errors(self, message_id: str, errors: Iterable[Mapping[str, Any]]) -> None:
        with self.engine.begin() as conn:
            self._lock_row(conn, message_id)
            self._append_errors(conn, message_id, [dict(e) for e in errors])

    @staticmethod
    def _lock_row(conn: Connection, message_id: str) -> None:
        # An UPDATE takes the row lock (PostgreSQL) or the write lock (SQLite) before a read-modify-write,
        # so concurrent writers queue instead of overwriting each other.
        conn.execute(messages.update().where(messages.c.id == message_id).values(updated_at=utcnow()))

    @staticmethod
    def _append_errors(conn: Connection, message_id: str, extra: list[dict[str, Any]]) -> None:
        # Read-modify-write is safe here: the caller's UPDATE already holds the row lock.
        current = conn.execute(sa.select(messages.c.errors).where(messages.c.id == message_id)).scalar()
        conn.execute(messages.update().where(messages.c.id == message_id).values(errors=[*(current or []), *extra]))

    def set_recipient_status(self, message_id: str, recipient: str, status: str) -> dict[str, str]:
        """Move one recipient of a group forward (by rank, never out of final); returns every recipient's status."""
        with self.engine.begin() as conn:
            self._lock_row(conn, message_id)
            current = dict(conn.execute(
                sa.select(messages.c.recipient_statuses).where(messages.c.id == message_id)).scalar() or {})
            if statuses.RANK[status] > statuses.RANK[current.get(recipient, statuses.SUBMITTED)]:
                current[recipient] = status
                conn.execute(messages.update().where(messages.c.id == message_id)
                             .values(recipient_statuses=current))
        return current

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

        Returns the moved row with ``parked``: whether events for ``telnyx_id`` wait to be applied.
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

    def touch(self, message_id: str, status: str) -> bool:
        """Mark a message as seen without changing its status (so it is not picked as stale again)."""
        with self.engine.begin() as conn:
            return conn.execute(
                messages.update()
                .where(messages.c.id == message_id, messages.c.status == status)
                .values(updated_at=utcnow())
            ).rowcount == 1

    # -- events ---------------------------------------------------------------------------------------

    def record_event(self, event_id: str, event_type: str, telnyx_id: str | None,
                     occurred_at: datetime | None, body: Mapping[str, Any]) -> bool:
        """Keep a verified event; False when its id is already known (a redelivery)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(events.insert().values(
                    event_id=event_id, event_type=event_type, telnyx_id=telnyx_id,
                    occurred_at=occurred_at, body=dict(body), received_at=utcnow(),
                ))
        except sa.exc.IntegrityError:
            return False
        return True

    def event_applied(self, event_id: str) -> bool:
        with self.reader.connect() as conn:
            return conn.execute(
                sa.select(events.c.applied_at).where(events.c.event_id == event_id)
            ).scalar() is not None

    def pending_events(self, telnyx_id: str) -> Iterator[dict[str, Any]]:
        """Events for ``telnyx_id`` not applied yet, oldest first."""
        with self.reader.connect() as conn:
            rows = [dict(r) for r in conn.execute(_PENDING_EVENTS, {"telnyx_id": telnyx_id}).mappings()]
        yield from rows

    def mark_applied(self, event_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(events.update().where(events.c.event_id == event_id).values(applied_at=utcnow()))


    # -- event batches (worker.events.apply_events): statements on the caller's transaction ------------

    @staticmethod
    def begin_batch(conn: Connection) -> None:
        """Take SQLite's write lock now, for a batch whose first statement is a read.

        pysqlite begins a transaction only before a write, so a read-then-write batch would read outside it.
        PostgreSQL needs nothing: the batch's rows are locked by :meth:`lock_messages`.
        """
        if conn.dialect.name == "sqlite" and not conn.connection.dbapi_connection.in_transaction:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    @staticmethod
    def keep_events(conn: Connection, rows: list[dict[str, Any]]) -> set[str]:
        """Insert events (``event_id``, ``event_type``, ``telnyx_id``, ``occurred_at``, ``body``) that are not
        kept yet, in one statement; returns the ids that were new."""
        if not rows:
            return set()
        now = utcnow()
        # Sorted so two batches sharing events insert them in the same order and never deadlock on PostgreSQL.
        params = [{**row, "received_at": now} for row in sorted(rows, key=lambda r: r["event_id"])]
        return set(conn.execute(insert_ignoring(conn.dialect.name, events), params).scalars())

    @staticmethod
    def applied_events(conn: Connection, event_ids: list[str]) -> set[str]:
        """Which of ``event_ids`` were applied (read after :meth:`lock_messages`, so an applier that held the
        lock before us is seen)."""
        if not event_ids:
            return set()
        return set(conn.execute(_APPLIED_EVENTS, {"ids": sorted(event_ids)}).scalars())

    @staticmethod
    def lock_messages(conn: Connection, telnyx_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The messages with these Telnyx ids, by Telnyx id, locked until the end of the transaction on
        PostgreSQL (in id order, so concurrent batches queue instead of deadlocking)."""
        wanted = sorted(set(telnyx_ids))
        if not wanted:
            return {}
        return {row["telnyx_id"]: dict(row) for row in conn.execute(_LOCK_MESSAGES, {"ids": wanted}).mappings()}

    @staticmethod
    def write_folded(conn: Connection, changes: list[FoldedMessage]) -> None:
        """Write what a batch of events did to its messages, a statement per step for all of them.

        Each status a message passed through is its own UPDATE so the history trigger records it (a batch
        that takes a message from ``submitted`` to ``delivered`` shows ``sent`` in between); the last UPDATE
        also carries the columns the events changed.
        """
        if not changes:
            return
        now = utcnow()
        for step in range(max(len(c.moves) for c in changes) - 1):
            passing = [{"_id": c.id, "_status": c.moves[step][0], "_at": c.moves[step][1] or now, "_now": now}
                       for c in sorted(changes, key=lambda c: c.id) if len(c.moves) > step + 1]
            conn.execute(_PASS_STATUS, passing)
        conn.execute(_WRITE_FOLDED, [
            {"_id": c.id, "_status": c.status, "_at": (c.moves[-1][1] or now) if c.moves else c.status_at,
             "_parts": c.parts, "_cost": c.cost, "_errors": c.errors, "_recipient_statuses": c.recipient_statuses,
             "_now": now}
            for c in sorted(changes, key=lambda c: c.id)])

    @staticmethod
    def mark_events_applied(conn: Connection, event_ids: list[str]) -> None:
        if event_ids:
            conn.execute(_MARK_APPLIED, {"ids": sorted(event_ids), "_now": utcnow()})

    def parked_known(self, since: datetime, limit: int = 500) -> list[dict[str, Any]]:
        """Events received since ``since``, still parked, whose Telnyx id a message now has: ``event_id``,
        ``body``. An index holds only unapplied events, so this stays cheap to run every scheduler tick."""
        with self.reader.connect() as conn:
            return [dict(r) for r in conn.execute(_PARKED_KNOWN, {"since": since, "limit": limit}).mappings()]


@dataclass
class FoldedMessage:
    """A message after a batch of events: the statuses it moved through (``(status, at)``, in order) and the
    columns to write."""

    id: str
    status: str
    status_at: datetime | None
    moves: list[tuple[str, datetime | None]]
    parts: int | None
    cost: Any
    errors: list[dict[str, Any]]
    recipient_statuses: dict[str, str] | None


@functools.lru_cache(maxsize=32)
def insert_ignoring(dialect: str, table: sa.Table) -> Any:
    """INSERT that skips rows whose key is already there, returning the key of each row it wrote.

    Inside a larger transaction a duplicate must not raise: on PostgreSQL the error would abort the whole
    transaction. The key comes back because psycopg gives no rowcount for INSERT ... ON CONFLICT.
    """
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing().returning(*table.primary_key.columns)


def insert_new(conn: Connection, table: sa.Table, row: Mapping[str, Any]) -> bool:
    """Insert ``row`` unless its key is there already; whether it was written."""
    return conn.execute(insert_ignoring(conn.dialect.name, table), dict(row)).first() is not None


def lock_names(conn: Connection, names: Iterable[str]) -> None:
    """Serialize transactions on ``names`` until commit (PostgreSQL advisory locks, taken in sorted order so
    two holders of several never deadlock). SQLite's single writer serializes already."""
    wanted = sorted(set(names))
    if wanted and conn.dialect.name == "postgresql":
        conn.execute(_ADVISORY_LOCKS, {"names": wanted})


_APPLIED_EVENTS = sa.select(events.c.event_id).where(
    events.c.event_id.in_(sa.bindparam("ids", expanding=True)), events.c.applied_at.is_not(None))
_LOCK_MESSAGES = (sa.select(*(messages.c[name] for name in (
    "id", "telnyx_id", "status", "status_at", "kind", "priority", "recipients", "recipient_statuses", "errors",
    "parts", "cost")))
    .where(messages.c.telnyx_id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(messages.c.id).with_for_update())
_PASS_STATUS = (messages.update().where(messages.c.id == sa.bindparam("_id"))
                .values(status=sa.bindparam("_status"), status_at=sa.bindparam("_at"),
                        updated_at=sa.bindparam("_now")))
_WRITE_FOLDED = (messages.update().where(messages.c.id == sa.bindparam("_id"))
                 .values(status=sa.bindparam("_status"), status_at=sa.bindparam("_at"),
                         parts=sa.bindparam("_parts"), cost=sa.bindparam("_cost", type_=sa.JSON),
                         errors=sa.bindparam("_errors", type_=sa.JSON),
                         recipient_statuses=sa.bindparam("_recipient_statuses", type_=sa.JSON),
                         updated_at=sa.bindparam("_now")))
_MARK_APPLIED = (events.update().where(events.c.event_id.in_(sa.bindparam("ids", expanding=True)))
                 .values(applied_at=sa.bindparam("_now")))
_PARKED_KNOWN = (sa.select(events.c.event_id, events.c.body)
                 .join(messages, messages.c.telnyx_id == events.c.telnyx_id)
                 .where(events.c.applied_at.is_(None), events.c.received_at >= sa.bindparam("since"))
                 .order_by(events.c.received_at).limit(sa.bindparam("limit")))
# One statement for any number of names; unnest keeps the array's (sorted) order.
_ADVISORY_LOCKS = sa.text("SELECT pg_advisory_xact_lock(hashtextextended(name, 0)) "
                          "FROM unnest(CAST(:names AS text[])) AS name")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
