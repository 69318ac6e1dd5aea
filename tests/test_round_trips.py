"""What one message costs in round trips, pinned: SQL statements and Redis calls of the send path.

Counts, not timings: a change that adds a statement or a Redis call to the hot path fails here, on SQLite and on
PostgreSQL. Statements are counted by a ``before_cursor_execute`` listener on both of the store's engines,
transactions by ``begin`` on the transactional engine (a BEGIN/COMMIT pair is two more round trips on
PostgreSQL; the autocommit reader's "begin" sends nothing), Redis round trips by
wrapping the connection's ``send_packed_command`` (a pipeline or a script call is one).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
import redis
import sqlalchemy as sa

from producers.producer import Producer
from worker import statuses
from worker.actors import Actors
from worker.broker import build_broker
from worker.holds import SenderHolds
from worker.sender_usage import UsageRecorder
from worker.sending import Defer, send_one
from worker.services import Services
from worker.store import Store

SENDER = "+13125550001"


@dataclass
class Count:
    statements: list[str] = field(default_factory=list)
    transactions: int = 0
    redis: list[str] = field(default_factory=list)


@contextmanager
def counting(store: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[Count]:
    count = Count()

    def statement(_conn, _cursor, text, *_args) -> None:
        count.statements.append(text.split(None, 1)[0].upper())

    def begin(_conn) -> None:
        count.transactions += 1

    original = redis.connection.AbstractConnection.send_packed_command

    def sent(self, command, *args, **kwargs):
        first = command[0] if isinstance(command, list | tuple) else command
        first = first if isinstance(first, bytes | bytearray | memoryview) else b""
        count.redis.append(bytes(first[:80]).split(b"\r\n")[2].decode(errors="replace") if first else "?")
        return original(self, command, *args, **kwargs)

    assert store.reader is not store.engine
    engines = {store.engine, store.reader}
    for engine in engines:
        sa.event.listen(engine, "before_cursor_execute", statement)
    sa.event.listen(store.engine, "begin", begin)
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", sent)
    try:
        yield count
    finally:
        monkeypatch.undo()
        for engine in engines:
            sa.event.remove(engine, "before_cursor_execute", statement)
        sa.event.remove(store.engine, "begin", begin)


@pytest.fixture
def sending(base_settings, simulator) -> Iterator[tuple[Services, Producer]]:
    settings = base_settings.model_copy(update={"telnyx_base_url": f"{simulator.url}/v2", "webhook_url": None})
    broker = build_broker(settings)
    services = Services.build(settings, broker=broker)
    producer = Producer(settings, services.store, Actors(broker))
    # Caches that refresh on the clock (limit overrides, the utilisation sums) would add a Redis call at
    # whatever moment they expire: frozen here, so the counts below are the per-message path alone.
    assert services.limiter is not None
    services.limiter.overrides.cache_s = 3600.0
    services.usage = UsageRecorder(services.limiter.client, settings.namespace, lambda keys: 1.0,
                                   clock=lambda: 0.0)
    send_one(services, producer.send("+13125550099", from_=SENDER, text="warm up"), last_try=False)
    yield services, producer
    broker.close()
    services.close()


def test_a_send_is_two_statements_no_transaction_and_one_redis_call(sending, monkeypatch):
    services, producer = sending
    message_id = producer.send("+13125550002", from_=SENDER, text="counted")

    with counting(services.store, monkeypatch) as count:
        assert send_one(services, message_id, last_try=False, generation=0) == statuses.SUBMITTED

    assert count.statements == ["UPDATE", "UPDATE"]  # the claim; submitted with the telnyx id
    assert count.transactions == 0  # each is its own autocommit statement: no BEGIN / COMMIT round trips
    assert count.redis == ["EVALSHA"]  # the limiter's reserve, which checks the sender's holds too


def test_a_deferred_send_is_two_statements_and_one_redis_call(sending, monkeypatch):
    services, producer = sending
    message_id = producer.send("+13125550003", from_=SENDER, text="held")
    SenderHolds(services.limiter.client, services.settings.namespace).hold(SENDER, 30, "test")

    with counting(services.store, monkeypatch) as count, pytest.raises(Defer) as deferred:
        send_one(services, message_id, last_try=False, generation=0)

    assert count.statements == ["UPDATE", "UPDATE"]  # the claim; the claim given back to a new job
    assert count.transactions == 0
    assert count.redis == ["EVALSHA"]
    assert deferred.value.reason == "sender_held" and deferred.value.generation == 1
    row = services.store.row(message_id)
    assert (row["status"], row["attempts"], row["job_gen"]) == (statuses.QUEUED, 0, 1)
    assert [h["status"] for h in services.store.history(message_id)] == [statuses.QUEUED]  # no trace of the claim


def test_a_suppressed_recipient_is_refused_by_the_claim_and_never_sent(sending, monkeypatch, simulator):
    services, producer = sending
    services.suppressions.add("+13125550004", number=SENDER, profile=None, source="manual")
    message_id = producer.send("+13125550004", from_=SENDER, text="opted out")
    before = len(simulator.state.messages)

    assert send_one(services, message_id, last_try=False, generation=0) == statuses.SUPPRESSED

    assert len(simulator.state.messages) == before
    assert [h["status"] for h in services.store.history(message_id)] == [statuses.QUEUED, statuses.SUPPRESSED]
