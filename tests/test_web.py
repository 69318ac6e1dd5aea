"""The webhook receiver over real HTTP: verified events are applied, everything else changes nothing."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from worker import statuses
from worker.serving import ServerThread, free_port
from worker.signature import Signer
from worker.store import NewMessage, events
from worker.web import create_app


@pytest.fixture
def submitted(stack):
    """A message Telnyx accepted, with no event applied yet."""
    row, _ = stack.services.store.insert(NewMessage(kind="long_code", priority="normal", recipients=["+13125550002"],
                                                    endpoint="/messages", body={"to": "+13125550002", "text": "x"}))
    telnyx_id = str(uuid.uuid4())
    stack.services.store.claim(row["id"])
    stack.services.store.transition(row["id"], statuses.SUBMITTED, values={"telnyx_id": telnyx_id})
    return row["id"], telnyx_id


def finalized(telnyx_id: str, event_id: str | None = None) -> bytes:
    return json.dumps({"data": {
        "event_type": "message.finalized", "id": event_id or str(uuid.uuid4()), "record_type": "event",
        "occurred_at": "2026-02-15T14:30:04.148+00:00",
        "payload": {"id": telnyx_id, "direction": "outbound", "sent_at": "2026-02-15T14:30:01.596+00:00",
                    "to": [{"phone_number": "+13125550002", "status": "delivered"}]},
    }, "meta": {"attempt": 1}}).encode()


def post(stack, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{stack.web_url}/webhooks/telnyx", content=body,
                      headers={"content-type": "application/json", **headers})


def stored_events(stack) -> int:
    with stack.services.store.engine.connect() as conn:
        return len(conn.execute(events.select()).all())


def test_a_verified_event_is_acknowledged_and_applied(stack, submitted):
    message_id, telnyx_id = submitted
    body = finalized(telnyx_id)

    response = post(stack, body, stack.simulator.signer.headers(body, int(time.time())))

    assert response.status_code == 200
    assert response.json() == {"result": "accepted"}
    record = stack.wait_final(message_id)
    assert record["status"] == statuses.DELIVERED


@pytest.mark.parametrize("forgery", ["wrong key", "tampered", "stale", "future", "no headers", "bad base64"])
def test_an_event_that_fails_verification_is_refused_and_changes_nothing(stack, submitted, forgery):
    message_id, telnyx_id = submitted
    body = finalized(telnyx_id)
    now = int(time.time())
    signer = stack.simulator.signer
    headers = {
        "wrong key": Signer.from_seed("attacker").headers(body, now),
        "tampered": signer.headers(body.replace(b"delivered", b"delivery_failed"), now),
        "stale": signer.headers(body, now - 301),
        "future": signer.headers(body, now + 310),  # margin: the clock runs on while the request travels
        "no headers": {},
        "bad base64": {**signer.headers(body, now), "telnyx-signature-ed25519": "%%%"},
    }[forgery]

    response = post(stack, body, headers)

    assert response.status_code == 401
    stack.actors.broker.join("events", timeout=5_000)
    assert stack.producer.status(message_id)["status"] == statuses.SUBMITTED
    assert stored_events(stack) == 0


def test_a_redelivered_event_is_enqueued_once(stack, submitted):
    _, telnyx_id = submitted
    body = finalized(telnyx_id, event_id="event-dup-1")
    answers = [post(stack, body, stack.simulator.signer.headers(body, int(time.time()))).json() for _ in range(3)]

    assert answers == [{"result": "accepted"}, {"result": "duplicate"}, {"result": "duplicate"}]
    stack.actors.broker.join("events", timeout=5_000)
    assert stored_events(stack) == 1


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"data": "x"}', b'{"data": {"id": "x"}}', b"\xff\xfe"])
def test_a_signed_but_malformed_body_is_400(stack, body):
    response = post(stack, body, stack.simulator.signer.headers(body, int(time.time())))

    assert response.status_code == 400


def test_a_body_over_the_cap_is_413(stack):
    body = b"{" + b" " * stack.settings.webhook_max_body_bytes + b"}"

    response = post(stack, body, stack.simulator.signer.headers(body, int(time.time())))

    assert response.status_code == 413


def test_without_a_public_key_every_webhook_is_refused(base_settings):
    body = finalized(str(uuid.uuid4()))
    with ServerThread(create_app(base_settings.model_copy(update={"telnyx_public_key": None}))) as web:
        response = httpx.post(f"{web.url}/webhooks/telnyx", content=body,
                              headers=Signer.from_seed("x").headers(body, int(time.time())))

    assert response.status_code == 401


def test_with_redis_and_the_store_down_a_verified_event_gets_503_so_telnyx_retries(base_settings):
    signer = Signer.from_seed("x")
    settings = base_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0",
                                                "database_url": f"postgresql://127.0.0.1:{free_port()}/x",
                                                "telnyx_public_key": signer.public_key})
    body = finalized(str(uuid.uuid4()))
    with ServerThread(create_app(settings)) as web:
        headers = signer.headers(body, int(time.time()))
        response = httpx.post(f"{web.url}/webhooks/telnyx", content=body, headers=headers)
        health = httpx.get(f"{web.url}/healthz")

    assert response.status_code == 503
    assert health.status_code == 503
    assert health.json()["redis"].startswith("error")


def test_health_and_metrics_answer(stack, submitted):
    _, telnyx_id = submitted
    body = finalized(telnyx_id)
    post(stack, body, {})

    assert httpx.get(f"{stack.web_url}/healthz").json() == {"redis": "ok", "store": "ok"}
    metrics = httpx.get(f"{stack.web_url}/metrics").text
    assert 'sendq_webhook_requests_total{result="bad_signature"}' in metrics
