"""The triggers the database runs on ``messages``: a message's history, and its campaign's counts by status.

Both are kept by the statement that changes a status, so no code path can skip them. Each definition replaces
the one an older sendq installed (:func:`worker.store.migration.migrate` runs them at every start).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from worker.store.engine import dialect_insert
from worker.store.schema import campaign_counts, messages, sync_state, utcnow

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

#: Rows per (campaign, status) on PostgreSQL (see :data:`worker.store.schema.campaign_counts`).
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
    # RETURNING, not rowcount: SQLAlchemy does not report psycopg's rowcount of an INSERT.
    claimed = conn.execute(dialect_insert(dialect, sync_state)
                           .values(name=COUNTS_BACKFILLED, value="1", updated_at=utcnow())
                           .on_conflict_do_nothing().returning(sync_state.c.name)).first()
    if claimed is None:
        return
    shard: sa.ColumnClause[int] = sa.literal_column(_COUNT_SHARD[dialect].format(id="messages.id"))
    # SQLite's shard is the constant 0, which GROUP BY would take for a column number.
    keys = [messages.c.campaign_id, messages.c.status, *([shard] if dialect == "postgresql" else [])]
    conn.execute(campaign_counts.delete())
    conn.execute(campaign_counts.insert().from_select(
        ["campaign_id", "status", "shard", "n"],
        sa.select(messages.c.campaign_id, messages.c.status, shard, sa.func.count())
        .where(messages.c.campaign_id.is_not(None)).group_by(*keys)))
