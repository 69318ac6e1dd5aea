"""Bad producer input is refused with the field named; nothing is stored and nothing is enqueued."""

from __future__ import annotations

import pytest

from producers.producer import Producer
from worker.actors import Actors
from worker.broker import build_broker
from worker.errors import ValidationError
from worker.queues import QUEUES
from worker.store import messages

PROFILE = "4001767e-ce0f-4cae-9d5f-0d5e636e7809"
GOOD = {"to": "+13125550002", "from_": "+13125550001", "text": "hello"}

BAD = [
    ("to", {"to": "3125550002"}),
    ("to", {"to": "+0123"}),
    ("to", {"to": ""}),
    ("text", {"text": ""}),
    ("text", {"text": "   "}),
    ("text", {"text": "x" * 1531}),
    ("text", {"text": "é" * 671 + "😀"}),
    ("kind", {"kind": "carrier_pigeon"}),
    ("priority", {"priority": "asap"}),
    ("idempotency_key", {"idempotency_key": "has spaces"}),
    ("idempotency_key", {"idempotency_key": "x" * 256}),
    ("idempotency_key", {"idempotency_key": ""}),
    ("from", {"from_": "+1-312-555"}),
    ("from", {"from_": None}),
    ("from", {"from_": "12345", "kind": "long_code"}),
    ("from", {"from_": "TOO-LONG-SENDER-ID"}),
    ("profile", {"from_": None, "profile": "not-a-uuid"}),
    ("profile", {"from_": None, "kind": "number_pool"}),
    ("profile", {"from_": "MyShop"}),
    ("media", {"media_urls": ["ftp://example.com/a.png"]}),
    ("media", {"media_urls": [f"https://example.com/{i}.png" for i in range(11)]}),
    ("media", {"from_": "MyShop", "profile": PROFILE, "media_urls": ["https://example.com/a.png"]}),
]


@pytest.fixture
def producer(base_settings, store):
    actors = Actors(build_broker(base_settings))
    yield Producer(base_settings, store, actors)
    actors.broker.close()


def queued_jobs(producer) -> int:
    client = producer.actors.broker.client
    return sum(client.llen(f"{producer.settings.namespace}:{q}") for q in QUEUES)


@pytest.mark.parametrize(("field", "change"), BAD, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD)])
def test_bad_input_names_the_field_and_stores_and_enqueues_nothing(producer, store, field, change):
    with pytest.raises(ValidationError) as refused:
        producer.send(**{**GOOD, **change})

    assert refused.value.field == field
    with store.engine.connect() as conn:
        assert conn.execute(messages.select()).all() == []
    assert queued_jobs(producer) == 0


@pytest.mark.parametrize(("change", "kind"), [
    ({}, "long_code"),
    ({"from_": "24680"}, "short_code"),
    ({"from_": "MyShop", "profile": PROFILE}, "alphanumeric"),
    ({"from_": None, "profile": PROFILE}, "number_pool"),
    ({"text": "x" * 1530}, "long_code"),
    ({"text": None, "media_urls": ["https://example.com/a.png"]}, "long_code"),
])
def test_good_input_is_stored_queued_and_enqueued_once(producer, store, change, kind):
    message_id = producer.send(**{**GOOD, **change})

    record = store.record(message_id)
    assert (record["status"], record["kind"]) == ("queued", kind)
    assert queued_jobs(producer) == 1
