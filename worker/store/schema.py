"""The store's schema: every table, with the column types and id and clock helpers they use.

Schema changes are additive only (new tables, nullable columns, indexes, triggers replaced in place), so a store
written by an older sendq keeps every message and stays readable by a newer one. The triggers that keep history
and campaign counts are in :mod:`worker.store.triggers`; :func:`worker.store.migration.migrate` brings a store up
to date (each process runs it once at start, and ``sendq migrate`` runs it alone).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa


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


#: A campaign's messages by status, kept by triggers (:mod:`worker.store.triggers`) so ``sendq campaign status``
#: reads a few dozen rows instead of counting the campaign's messages. Counters per (campaign, status), split in
#: ``CAMPAIGN_COUNT_SHARDS`` rows by message id on PostgreSQL: a status change holds its counter row's lock until
#: commit, and workers finishing messages of one campaign at once would otherwise queue on one row. A campaign's
#: count of a status is the sum over its shards.
campaign_counts = sa.Table(
    "campaign_counts",
    metadata,
    sa.Column("campaign_id", sa.String(36), primary_key=True),
    sa.Column("status", sa.String(24), primary_key=True),
    sa.Column("shard", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("n", sa.BigInteger, nullable=False),
)
