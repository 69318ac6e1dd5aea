"""Group commit in the webhook receiver: verified events that arrive together become one ``apply_events`` job.

Over real HTTP (uvicorn) with a real Redis, the queue is read back to count jobs; the batcher is also driven on its
own (it is an explicit object) to fail Redis at chosen points. End to end, a real worker applies a batch.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from redis import asyncio as aioredis

from worker import statuses
from worker.actors import Actors
from worker.broker import build_broker
from worker.dramatiq_internals import AsyncEnqueue
from worker.serving import ServerThread, free_port
from worker.settings import Settings
from worker.signature import Signer
from worker.store import NewMessage
from worker.web import create_app
from worker.webhooks import WebhookBatcher

SIGNER = Signer.from_seed("batching")


def event_body(event_id: str | None = None, telnyx_id: str | None = None) -> bytes:
    return json.dumps({"data": {
        "event_type": "message.finalized", "id": event_id or str(uuid.uuid4()), "record_type": "event",
        "occurred_at": "2026-02-15T14:30:04.148+00:00",
        "payload": {"id": telnyx_id or str(uuid.uuid4()), "direction": "outbound",
                    "to": [{"phone_number": "+13125550002", "status": "delivered"}]},
    }, "meta": {"attempt": 1}}).encode()


def jobs(settings: Settings) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        return [json.loads(raw) for raw in client.hvals(f"{settings.namespace}:events.msgs")]
    finally:
        client.close()


async def post_all(url: str, bodies: list[bytes], signer: Signer = SIGNER) -> list[httpx.Response]:
    """Every body at once, each on its own connection, so they land in one window."""
    now = int(time.time())
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:
        return await asyncio.gather(*(client.post("/webhooks/telnyx", content=body, headers=signer.headers(body, now))
                                      for body in bodies))


@pytest.fixture
def web_settings(base_settings: Settings) -> Settings:
    # A wide window: requests sent together by a loaded test machine still fall into one batch.
    return base_settings.model_copy(update={"telnyx_public_key": SIGNER.public_key, "webhook_batch_ms": 300.0})


@pytest.fixture
def web(web_settings: Settings) -> Iterator[str]:
    with ServerThread(create_app(web_settings)) as server:
        yield server.url


def test_concurrent_webhooks_within_the_window_become_one_job_holding_them_all(web, web_settings):
    bodies = [event_body() for _ in range(20)]

    answers = asyncio.run(post_all(web, bodies))

    assert [(a.status_code, a.json()) for a in answers] == [(200, {"result": "accepted"})] * 20
    [job] = jobs(web_settings)
    assert job["actor_name"] == "apply_events"
    assert sorted(e["data"]["id"] for e in job["args"][0]) == sorted(json.loads(b)["data"]["id"] for b in bodies)


def test_one_event_id_twice_in_a_batch_is_accepted_once_and_a_duplicate_once(web, web_settings):
    body = event_body("event-twice")
    other = event_body()

    answers = asyncio.run(post_all(web, [body, other, body]))

    results = [a.json()["result"] for a in answers]
    assert results[1] == "accepted"
    assert sorted([results[0], results[2]]) == ["accepted", "duplicate"]
    [job] = jobs(web_settings)
    assert sorted(e["data"]["id"] for e in job["args"][0]) == sorted(["event-twice", json.loads(other)["data"]["id"]])


def test_a_full_batch_is_flushed_without_waiting_for_its_window(base_settings):
    settings = base_settings.model_copy(update={"telnyx_public_key": SIGNER.public_key, "webhook_batch_ms": 5_000.0,
                                                "webhook_batch_max": 4})
    with ServerThread(create_app(settings)) as server:
        started = time.monotonic()
        answers = asyncio.run(post_all(server.url, [event_body() for _ in range(8)]))
        elapsed = time.monotonic() - started

    assert [a.json()["result"] for a in answers] == ["accepted"] * 8
    assert elapsed < 4
    assert sorted(len(job["args"][0]) for job in jobs(settings)) == [4, 4]


def test_with_redis_and_the_store_down_every_request_of_a_batch_gets_503(web_settings):
    down = web_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0",
                                           "database_url": f"postgresql://127.0.0.1:{free_port()}/x"})
    with ServerThread(create_app(down)) as server:
        answers = asyncio.run(post_all(server.url, [event_body() for _ in range(5)]))

    assert [(a.status_code, a.json()) for a in answers] == [(503, {"result": "unavailable"})] * 5


# --- the batcher on its own: failures at chosen points ----------------------------------------------------------


class FailingEnqueue:
    """An enqueue that fails as a dropped Redis connection would, after the dedupe keys were set."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, message: Any) -> None:
        self.calls += 1
        raise redis.ConnectionError("connection lost")


async def submit_all(batcher: WebhookBatcher, namespace: str, ids: list[str]) -> list[str]:
    return await asyncio.gather(*(batcher.submit(f"{namespace}:webhook:{i}".encode(), {"data": {"id": i}}, 10)
                                  for i in ids))


@pytest.mark.anyio
async def test_when_the_enqueue_fails_nothing_is_acknowledged_and_the_retry_is_accepted(web_settings):
    client = aioredis.Redis.from_url(web_settings.redis_url or "")
    broker = build_broker(web_settings)
    ns = web_settings.namespace
    try:
        failing, actors = FailingEnqueue(), Actors(broker)
        batcher = WebhookBatcher(client, actors, failing, dedupe_ttl_s=60, window_s=0.05, max_size=100)
        await client.set(f"{ns}:webhook:seen".encode(), b"1")  # an event accepted before

        assert await submit_all(batcher, ns, ["a", "b", "seen"]) == ["unavailable"] * 3
        assert failing.calls == 1
        # The keys this batch set are gone (Telnyx's retry must not be a duplicate); the older one stays.
        assert sorted(await client.keys(f"{ns}:webhook:*")) == [f"{ns}:webhook:seen".encode()]

        working = WebhookBatcher(client, actors, AsyncEnqueue(broker, client), dedupe_ttl_s=60,
                                 window_s=0.05, max_size=100)
        assert await submit_all(working, ns, ["a", "b", "seen"]) == ["accepted", "accepted", "duplicate"]
        [job] = jobs(web_settings)
        assert [e["data"]["id"] for e in job["args"][0]] == ["a", "b"]
    finally:
        await client.aclose()
        broker.close()


@pytest.mark.anyio
async def test_close_flushes_what_waits_and_refuses_what_comes_after(web_settings):
    client = aioredis.Redis.from_url(web_settings.redis_url or "")
    broker = build_broker(web_settings)
    ns = web_settings.namespace
    try:
        batcher = WebhookBatcher(client, Actors(broker), AsyncEnqueue(broker, client), dedupe_ttl_s=60,
                                 window_s=60.0, max_size=100)
        waiting = asyncio.ensure_future(submit_all(batcher, ns, ["x", "y"]))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # a minute-long window: only close() can flush it

        await asyncio.wait_for(batcher.close(), 10)

        assert await asyncio.wait_for(waiting, 1) == ["accepted", "accepted"]
        assert await submit_all(batcher, ns, ["z"]) == ["unavailable"]
        assert [len(job["args"][0]) for job in jobs(web_settings)] == [2]
    finally:
        await client.aclose()
        broker.close()


@pytest.mark.anyio
async def test_close_answers_503_when_redis_never_answers(web_settings):
    # A server that accepts connections and never replies: the flush hangs until close() gives up on it.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=None)
    broker = build_broker(web_settings)
    try:
        batcher = WebhookBatcher(client, Actors(broker), AsyncEnqueue(broker, client), dedupe_ttl_s=60,
                                 window_s=0.0, max_size=100)
        waiting = asyncio.ensure_future(submit_all(batcher, "ns", ["x", "y"]))
        await asyncio.sleep(0.1)
        assert not waiting.done()

        await asyncio.wait_for(batcher.close(timeout_s=0.2), 5)

        assert await asyncio.wait_for(waiting, 1) == ["unavailable", "unavailable"]
    finally:
        server.close()
        await client.aclose()
        broker.close()


# --- end to end: a worker applies the batch ----------------------------------------------------------------------


def test_a_batch_of_final_webhooks_is_applied_by_a_worker(stack):
    store = stack.services.store
    submitted = []
    for _ in range(10):
        row, _ = store.insert(NewMessage(kind="long_code", priority="normal", recipients=["+13125550002"],
                                         endpoint="/messages", body={"to": "+13125550002", "text": "x"}))
        telnyx_id = str(uuid.uuid4())
        store.claim(row["id"])
        store.transition(row["id"], statuses.SUBMITTED, values={"telnyx_id": telnyx_id})
        submitted.append((row["id"], telnyx_id))

    answers = asyncio.run(post_all(stack.web_url, [event_body(telnyx_id=t) for _, t in submitted],
                                   stack.simulator.signer))

    assert [a.json()["result"] for a in answers] == ["accepted"] * 10
    assert [stack.wait_final(m)["status"] for m, _ in submitted] == [statuses.DELIVERED] * 10
