"""The store's schema: every table, the triggers that keep history and campaign counts, and the migration step.

Schema changes are additive only (new tables, nullable columns, indexes, triggers replaced in place), so a store
written by an older sendq keeps every message and stays readable by a newer one. :func:`migrate` brings a store
up to date; each process runs it once at start, and ``sendq migrate`` runs it alone.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine


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


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


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


def migrate(engine: Engine) -> None:
    """Create missing tables, add columns a newer sendq added to an existing table, and (re)install the triggers."""
    for attempt in range(5):
        try:
            with engine.begin() as conn:
                _migrate(conn)
            return
        except sa.exc.DBAPIError:
            # Processes starting together race to create the same objects; the loser tries again and finds
            # them there.
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


def _migrate(conn: Connection) -> None:
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

