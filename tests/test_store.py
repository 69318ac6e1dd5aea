"""The store's status rule on both backends: forward by rank only, never out of a final status."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from worker import statuses
from worker.errors import NotFoundError
from worker.store import NewMessage


def new_message(**overrides) -> NewMessage:
    fields = {"kind": "long_code", "priority": "normal", "recipients": ["+13125550002"], "endpoint": "/messages",
              "body": {"to": "+13125550002", "from": "+13125550001", "text": "hi"}, "sender": "+13125550001"}
    return NewMessage(**{**fields, **overrides})


def test_a_message_moves_forward_and_never_back(store):
    row, created = store.insert(new_message())
    assert created
    assert store.claim(row["id"])["status"] == statuses.SENDING
    assert store.transition(row["id"], statuses.SUBMITTED)
    assert store.transition(row["id"], statuses.SENT)

    assert not store.transition(row["id"], statuses.SUBMITTED)
    assert not store.transition(row["id"], statuses.SENDING)
    assert store.row(row["id"])["status"] == statuses.SENT


@pytest.mark.parametrize("final", sorted(statuses.FINAL))
def test_a_final_status_never_changes(store, final):
    row, _ = store.insert(new_message())
    assert store.transition(row["id"], final)

    for other in sorted(statuses.ALL - {final}):
        assert not store.transition(row["id"], other)
    assert store.row(row["id"])["status"] == final
    assert [h["status"] for h in store.history(row["id"])] == ["queued", final]


def test_only_one_of_many_concurrent_claims_wins(store):
    row, _ = store.insert(new_message())
    results = []
    barrier = threading.Barrier(8)

    def claim():
        barrier.wait()
        results.append(store.claim(row["id"]))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sum(r is not None for r in results) == 1
    assert store.row(row["id"])["attempts"] == 1


def test_an_explicit_from_set_allows_a_step_back_for_a_retry(store):
    row, _ = store.insert(new_message())
    store.claim(row["id"])
    assert store.transition(row["id"], statuses.QUEUED, from_=[statuses.SENDING],
                            add_errors=[{"code": "10007", "title": "Unexpected error", "detail": None}])

    assert store.claim(row["id"])["attempts"] == 2
    assert store.row(row["id"])["errors"] == [{"code": "10007", "title": "Unexpected error", "detail": None}]
    assert [h["status"] for h in store.history(row["id"])] == ["queued", "sending", "queued", "sending"]


def test_an_idempotency_key_is_stored_once(store):
    first, created = store.insert(new_message(idempotency_key="k-1"))
    again, created_again = store.insert(new_message(idempotency_key="k-1"))

    assert created and not created_again
    assert again["id"] == first["id"]


def test_the_record_has_every_contract_field(store):
    row, _ = store.insert(new_message())
    record = store.record(row["id"])

    assert set(record) >= {"id", "status", "to", "from", "kind", "priority", "telnyx_id", "attempts", "errors",
                           "parts", "cost", "send_at", "created_at", "updated_at", "history"}
    assert record["to"] == "+13125550002"
    assert record["history"][0]["status"] == "queued"


def test_an_unknown_id_is_not_found(store):
    with pytest.raises(NotFoundError):
        store.record("no-such-id")


def test_events_are_kept_once_by_id(store):
    assert store.record_event("ev-1", "message.sent", "tx-1", None, {"data": {}})
    assert not store.record_event("ev-1", "message.sent", "tx-1", None, {"data": {}})


def test_a_store_from_an_older_schema_gains_new_columns_and_keeps_its_messages(store):
    row, _ = store.insert(new_message())
    with store.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE messages DROP COLUMN recipient_statuses"))

    store.migrate()

    assert store.record(row["id"])["recipient_statuses"] is None
    assert store.record(row["id"])["to"] == "+13125550002"
