"""Round trips of the events path, pinned: a batch costs a fixed number of SQL statements, however many events
it carries, so per event the cost tends to zero. Fails if a change makes them grow.

Counted with ``before_cursor_execute`` on both of the store's engines: every statement sent to the database,
an executemany counted once (psycopg 3 pipelines it; SQLite runs it in process). BEGIN and COMMIT are not
counted: the drivers send them without a cursor (one of each per batch).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from worker import events, statuses
from worker.store import NewMessage

#: A batch of message.finalized events for known ``submitted`` messages: INSERT events, SELECT (and lock) the
#: messages, UPDATE to ``sent`` (the final event's sent_at implies it), UPDATE to the final status with the
#: event's columns, UPDATE events applied.
FINALIZED_BATCH = 5
#: The same for messages already ``sent``: no intermediate step.
FINALIZED_FROM_SENT_BATCH = 4
#: The events path before batching, per message.finalized event (for the record: INSERT, SELECT id, SELECT
#: row, UPDATE sent, UPDATE final, SELECT row for the metric, UPDATE applied), in four transactions.
PER_EVENT_BEFORE = 7


@contextmanager
def counted(store) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(_conn, _cursor, statement, _params, _context, _executemany) -> None:
        seen.append(statement)

    engines = {store.engine, store.reader}
    for engine in engines:
        sa.event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        for engine in engines:
            sa.event.remove(engine, "before_cursor_execute", count)


def known(store, status: str = statuses.SUBMITTED) -> str:
    row, _ = store.insert(NewMessage(kind="long_code", priority="normal", recipients=["+13125550002"],
                                     endpoint="/messages", body={"to": "+13125550002", "text": "hi"}))
    telnyx_id = str(uuid.uuid4())
    store.claim(row["id"])
    store.transition(row["id"], statuses.SUBMITTED, values={"telnyx_id": telnyx_id})
    if status == statuses.SENT:
        store.transition(row["id"], statuses.SENT)
    return telnyx_id


def finalized(telnyx_id: str) -> dict:
    return {"data": {
        "event_type": "message.finalized", "id": str(uuid.uuid4()), "occurred_at": "2026-02-15T14:30:04.148+00:00",
        "record_type": "event",
        "payload": {"id": telnyx_id, "direction": "outbound", "parts": 1, "sent_at": "2026-02-15T14:30:01.596+00:00",
                    "cost": {"amount": "0.0040", "currency": "USD"},
                    "to": [{"phone_number": "+13125550002", "status": "delivered"}], "errors": []},
    }}


@pytest.mark.parametrize("k", [1, 10, 40])
def test_a_batch_of_finalized_events_costs_the_same_statements_for_any_size(store, k):
    batch = [finalized(known(store)) for _ in range(k)]

    with counted(store) as statements:
        outcomes = events.apply_events(store, batch)

    assert outcomes == [events.APPLIED] * k
    assert len(statements) == FINALIZED_BATCH, statements
    assert len(statements) / k <= PER_EVENT_BEFORE / k  # per event: 5/k, where it was 7 each


def test_one_event_alone_costs_at_most_a_batch(store):
    event = finalized(known(store))

    with counted(store) as statements:
        assert events.apply_event(store, event) == events.APPLIED

    assert len(statements) == FINALIZED_BATCH < PER_EVENT_BEFORE, statements


def test_messages_already_sent_skip_the_intermediate_step(store):
    batch = [finalized(known(store, statuses.SENT)) for _ in range(10)]

    with counted(store) as statements:
        events.apply_events(store, batch)

    assert len(statements) == FINALIZED_FROM_SENT_BATCH, statements


def test_a_redelivered_batch_costs_one_more_read_and_writes_nothing(store):
    batch = [finalized(known(store)) for _ in range(10)]
    events.apply_events(store, batch)

    with counted(store) as statements:
        assert events.apply_events(store, batch) == [events.DUPLICATE] * 10

    # INSERT (nothing new), SELECT messages, SELECT which were applied; no UPDATE at all.
    assert len(statements) == 3, statements
    assert not any(s.lstrip().upper().startswith("UPDATE") for s in statements)
