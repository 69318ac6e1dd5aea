"""Campaign counters: the triggers' counts equal a GROUP BY over the campaign's messages after real runs,
pause/resume/cancel, racing threads, and the schema upgrade of a store made before the counters."""

from __future__ import annotations

import random
import threading
import time

import sqlalchemy as sa

from worker import statuses
from worker.campaigns.store import CANCELLED, COMPLETED, PAUSED, Campaigns
from worker.store import COUNTS_BACKFILLED, Store, campaign_counts, messages, sync_state
from worker.suppressions import Suppressions

SENDER = "+13125550001"


def _grouped(store: Store, campaign_id: str) -> dict[str, int]:
    """The counts the counters stand for, the slow way."""
    with store.engine.connect() as conn:
        return _grouped_in(conn, campaign_id)


def _grouped_in(conn: sa.Connection, campaign_id: str) -> dict[str, int]:
    return dict(conn.execute(sa.select(messages.c.status, sa.func.count())
                             .where(messages.c.campaign_id == campaign_id).group_by(messages.c.status)).all())


def _assert_snapshot_matches(store: Store, campaign_id: str) -> None:
    """Counters and messages read in one snapshot: exact even while workers move the campaign's messages."""
    with store.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        else:
            conn.exec_driver_sql("BEGIN")  # pysqlite opens no transaction for reads by itself
        counted = {s: n for s, n in conn.execute(
            sa.select(campaign_counts.c.status, sa.func.sum(campaign_counts.c.n))
            .where(campaign_counts.c.campaign_id == campaign_id).group_by(campaign_counts.c.status)) if n}
        assert counted == _grouped_in(conn, campaign_id)
        conn.rollback()


def _book(store: Store) -> Campaigns:
    return Campaigns(store.engine, store.reader)


def _assert_counts_match(store: Store, campaign_id: str) -> dict[str, int]:
    book, grouped = _book(store), _grouped(store, campaign_id)
    assert book.counts(campaign_id) == grouped
    assert book.outstanding(campaign_id) == grouped.get(statuses.QUEUED, 0)
    assert book.unfinished(campaign_id) == sum(n for s, n in grouped.items() if not statuses.is_final(s))
    return grouped


def _wait(predicate, timeout_s: float = 40.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while not (found := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return found


def _limit(stack, mps: float) -> None:
    settings = stack.settings.model_copy(update={
        "rate_limits": {**stack.settings.rate_limits, SENDER: mps}, "limiter_max_wait_s": 0.2})
    stack.services.settings = settings
    stack.services.limiter = type(stack.services.limiter).from_settings(stack.actors.broker.client, settings)
    stack.producer.settings = settings


def _stored_campaign(store: Store, n: int, *, suppressed: tuple[int, ...] = ()) -> str:
    """A running campaign of ``n`` recipients expanded into messages by the expander's own INSERT (no workers)."""
    book = _book(store)
    for seq in suppressed:
        Suppressions.of(store).add(f"+1312600{seq:04d}", number=SENDER, source="manual")
    campaign = book.insert(name="counts", kind="long_code", endpoint="/messages/long_code", body={}, senders=[SENDER],
                           messaging_profile_id=None, template="Hi", send_at=None, valid_for_s=None, rate_cap=None)
    rows = [{"seq": seq, "phone": f"+1312600{seq:04d}", "sender": SENDER, "text": "Hi"} for seq in range(1, n + 1)]
    book.add_recipients(campaign["id"], rows, read=n, invalid=0)
    book.finish_ingest(campaign["id"])
    while (taken := book.expand(book.get(campaign["id"]), 300)[0]):
        assert taken > 0
    return str(campaign["id"])


def _ids(store: Store, campaign_id: str, status: str | None = None) -> list[str]:
    query = sa.select(messages.c.id).where(messages.c.campaign_id == campaign_id).order_by(messages.c.id)
    if status is not None:
        query = query.where(messages.c.status == status)
    with store.engine.connect() as conn:
        return list(conn.execute(query).scalars())


def test_counts_follow_a_campaign_run_by_workers_to_completion(stack):
    Suppressions.of(stack.producer.store).add("+13125550702", number=SENDER, source="manual")
    rows = [{"phone": f"+131255507{i:02d}"} for i in range(30)]
    created = stack.producer.campaign(rows, template="Sale", from_=SENDER)
    record = _wait(lambda: (lambda r: r if r["status"] == COMPLETED else None)(
        stack.producer.campaign_status(created["id"])), what="the campaign to complete")
    grouped = _assert_counts_match(stack.producer.store, created["id"])
    assert grouped == {statuses.DELIVERED: 29, statuses.SUPPRESSED: 1} == record["messages"]


def test_counts_follow_pause_resume_and_cancel(stack):
    _limit(stack, 10.0)
    store = stack.producer.store
    n = 60
    created = stack.producer.campaign([{"phone": f"+1312559{i:04d}"} for i in range(n)], template="Hi", from_=SENDER)
    _wait(lambda: len(stack.sim_messages()) >= 5, what="the first sends")

    assert stack.producer.pause_campaign(created["id"])["status"] == PAUSED
    _wait(lambda: stack.producer.campaign_status(created["id"])["messages"].get(statuses.SENDING, 0) == 0,
          what="claimed sends to finish")
    _assert_snapshot_matches(store, created["id"])

    stack.producer.resume_campaign(created["id"])
    _wait(lambda: len(stack.sim_messages()) >= 15, what="sends after the resume")
    for _ in range(20):  # while the workers send and webhooks arrive
        _assert_snapshot_matches(store, created["id"])

    assert stack.producer.cancel_campaign(created["id"])["status"] == CANCELLED
    settled = _wait(lambda: (lambda g: g if not any(s in g for s in (statuses.SENDING, statuses.SUBMITTED,
                                                                        statuses.SENT)) else None)(
        _grouped(store, created["id"])), what="sends to settle")
    grouped = _assert_counts_match(store, created["id"])
    assert grouped == settled and grouped.get(statuses.CANCELLED, 0) > 0
    assert sum(grouped.values()) == _book(store).get(created["id"])["expanded"] <= n


def test_counts_are_exact_when_threads_move_one_campaigns_messages_at_once(store):
    campaign_id = _stored_campaign(store, 400, suppressed=(3, 77, 150))
    assert _assert_counts_match(store, campaign_id) == {statuses.QUEUED: 397, statuses.SUPPRESSED: 3}
    ids = _ids(store, campaign_id)
    errors: list[BaseException] = []
    start = threading.Barrier(9)

    def mover(seed: int) -> None:
        # Every thread walks all messages in its own order: they race for the same rows and the same counters.
        order = random.Random(seed).sample(ids, len(ids))
        try:
            start.wait()
            for message_id in order:
                if store.claim(message_id) is None:
                    continue
                store.transition(message_id, statuses.SUBMITTED, values={"telnyx_id": f"t-{message_id}"})
                store.transition(message_id, statuses.SENT)
                store.transition(message_id, random.Random(message_id).choice(
                    [statuses.DELIVERED, statuses.DELIVERY_FAILED]))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def canceller() -> None:
        start.wait()
        time.sleep(0.2)
        try:
            _book(store).cancel(campaign_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=mover, args=(seed,)) for seed in range(8)]
    threads.append(threading.Thread(target=canceller))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    grouped = _assert_counts_match(store, campaign_id)
    assert sum(grouped.values()) == 400 and all(statuses.is_final(s) for s in grouped)
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.min(campaign_counts.c.n))).scalar() >= 0


def test_a_store_made_before_the_counters_gets_them_built_on_upgrade(store):
    first = _stored_campaign(store, 50, suppressed=(5,))
    # What an older sendq's store looks like: no counters, no triggers, no marker.
    with store.engine.begin() as conn:
        for trigger in ("messages_campaign_counts_insert", "messages_campaign_counts_update",
                        "messages_campaign_counts_delete"):
            on = " ON messages" if conn.dialect.name == "postgresql" else ""
            conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {trigger}{on}"))
        conn.execute(sa.text("DROP TABLE campaign_counts"))
        conn.execute(sync_state.delete().where(sync_state.c.name == COUNTS_BACKFILLED))
    # The older sendq keeps working: a second campaign is created and messages of both move.
    second = _stored_campaign(store, 20)
    for message_id in _ids(store, first, statuses.QUEUED)[:10] + _ids(store, second, statuses.QUEUED)[:4]:
        store.claim(message_id)
    assert _book(store).cancel(second)

    store.migrate()  # a newer sendq starts
    assert _assert_counts_match(store, first)[statuses.SENDING] == 10
    # The recipient suppressed for the first campaign is suppressed for the second too.
    assert _assert_counts_match(store, second) == {statuses.SENDING: 4, statuses.CANCELLED: 15,
                                                   statuses.SUPPRESSED: 1}

    # From then on the triggers keep them, and a later start does not count anything twice.
    for message_id in _ids(store, first, statuses.QUEUED)[:10]:
        store.claim(message_id)
    store.migrate()
    assert _assert_counts_match(store, first) == {statuses.QUEUED: 29, statuses.SENDING: 20, statuses.SUPPRESSED: 1}


def test_counts_of_a_campaign_without_messages_are_empty(store):
    book = _book(store)
    assert book.counts("no-such-campaign") == {}
    assert book.outstanding("no-such-campaign") == book.unfinished("no-such-campaign") == 0
