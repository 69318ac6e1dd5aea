"""Application hooks: a real dramatiq worker, running an application's own actors on their own queue, receives
every inbound message and every message's final status, once each, without polling sendq."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import httpx
import pytest

from worker import events, statuses
from worker.broker import build_broker
from worker.errors import ValidationError
from worker.hooks import Hooks
from worker.queues import DEFAULT_HOOK_QUEUE, Target
from worker.settings import Settings

APP_QUEUE = "app_events"
NUMBER = "+13125550001"


@pytest.fixture
def base_settings(base_settings: Settings) -> Settings:
    """Every stack in this module runs with both hooks configured."""
    return base_settings.model_copy(update={"inbound_actor": f"{APP_QUEUE}:on_inbound", "status_actor":
                                            f"{APP_QUEUE}:on_status"})


class App:
    """The application's side: its own broker and worker, and what its actors received."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: dict[str, list[dict[str, Any]]] = {"inbound": [], "status": []}

    def record(self, hook: str, payload: dict[str, Any]) -> None:
        with self.lock:
            self.received[hook].append(payload)

    def got(self, hook: str, **match: Any) -> list[dict[str, Any]]:
        with self.lock:
            return [p for p in self.received[hook] if all(p.get(k) == v for k, v in match.items())]

    def wait(self, hook: str, timeout_s: float = 15.0, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while not self.got(hook, **match):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {hook} hook with {match}; got {self.received[hook]}")
            time.sleep(0.05)
        return self.got(hook, **match)[0]


@pytest.fixture
def app(stack) -> Iterator[App]:
    """A worker of the application (not sendq's): it knows only its two actors and consumes only its queue."""
    received = App()
    broker = build_broker(stack.settings)
    dramatiq.actor(lambda payload: received.record("inbound", payload), broker=broker, actor_name="on_inbound",
                   queue_name=APP_QUEUE)
    dramatiq.actor(lambda payload: received.record("status", payload), broker=broker, actor_name="on_status",
                   queue_name=APP_QUEUE)
    worker = dramatiq.Worker(broker, queues={APP_QUEUE}, worker_threads=2, worker_timeout=100)
    worker.start()
    yield received
    worker.stop()
    broker.close()


def test_a_delivered_message_is_handed_over_once_with_its_record(stack, app):
    message_id = stack.producer.send("+13125550002", from_=NUMBER, text="hi")

    payload = app.wait("status", id=message_id)

    assert payload["status"] == statuses.DELIVERED
    assert payload["telnyx_id"] and payload["to"] == "+13125550002" and payload["from"] == NUMBER
    assert [h["status"] for h in payload["history"]][-1] == statuses.DELIVERED
    time.sleep(0.5)
    assert len(app.got("status", id=message_id)) == 1


def test_inbound_messages_and_suppressed_sends_reach_the_application(stack, app):
    who = f"+1312555{uuid.uuid4().int % 10_000:04d}"
    for text in ("hello there", "STOP"):
        httpx.post(f"{stack.simulator.url}/_sim/inbound",
                   json={"from": who, "to": NUMBER, "text": text, "webhook_url": stack.settings.webhook_url})

    hello = app.wait("inbound", text="hello there")
    stop = app.wait("inbound", text="STOP")
    assert (hello["from"], hello["to"], hello["keyword"]) == (who, NUMBER, None)
    assert stop["keyword"] == "stop" and stop["messaging_profile_id"]

    stack.simulator.optouts.reset()  # only sendq's list stops the next send
    message_id = stack.producer.send(who, from_=NUMBER, text="after stop")
    suppressed = app.wait("status", id=message_id)
    assert suppressed["status"] == statuses.SUPPRESSED
    assert suppressed["errors"][0]["code"] == "sendq.suppressed"


def test_the_same_inbound_message_in_two_events_is_handed_over_once(stack, app):
    payload = {"id": str(uuid.uuid4()), "direction": "inbound", "text": "twice", "messaging_profile_id": None,
               "from": {"phone_number": "+13125550077"}, "to": [{"phone_number": NUMBER}]}
    for _ in range(2):
        event = {"data": {"event_type": "message.received", "id": str(uuid.uuid4()), "payload": payload}}
        assert events.apply_event(stack.services.store, event, stack.services.hooks) == events.APPLIED

    app.wait("inbound", text="twice")
    time.sleep(0.5)
    assert len(app.got("inbound", text="twice")) == 1


@pytest.mark.parametrize(("value", "expected"), [
    ("on_status", Target(DEFAULT_HOOK_QUEUE, "on_status")),
    ("app:on_status", Target("app", "on_status")),
    (" app.events:on_status ", Target("app.events", "on_status")),
    (None, None),
    ("", None),
])
def test_targets_parse(value, expected):
    assert Target.parse(value, "SENDQ_STATUS_ACTOR") == expected


@pytest.mark.parametrize("value", ["default:on_status", "events:x", "app:", "bad queue:x", "app:bad name"])
def test_bad_targets_are_refused_naming_the_variable(value):
    with pytest.raises(ValidationError) as refused:
        Settings(status_actor=value)
    assert refused.value.field == "SENDQ_STATUS_ACTOR"


def test_hooks_without_a_broker_or_target_do_nothing(store):
    assert Hooks.disabled().inbound_message({"id": "x"}) is False
    assert Hooks(None, status=Target("app", "s")).final_status(store, "no-such-id", statuses.DELIVERED) is False


def test_a_campaign_is_handed_over_when_it_completes_and_when_it_is_cancelled(stack, app):
    rows = [{"phone": "+13125550301"}, {"phone": "+13125550302"}]
    done = stack.producer.campaign(rows, template="Hello", from_=NUMBER)
    in_a_day = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    later = stack.producer.campaign(rows, template="Later", from_=NUMBER, send_at=in_a_day)
    stack.producer.cancel_campaign(later["id"])

    completed = app.wait("status", record_type="campaign", id=done["id"])
    cancelled = app.wait("status", record_type="campaign", id=later["id"])

    assert completed["status"] == "completed" and completed["messages"] == {statuses.DELIVERED: 2}
    assert cancelled["status"] == "cancelled" and cancelled["messages"] == {statuses.CANCELLED: 2}
    assert len(app.got("status", record_type="campaign")) == 2
