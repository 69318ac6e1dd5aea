"""``sendq web``: the ASGI app that receives Telnyx webhooks, plus health and metrics.

A webhook is read with a size cap, verified (Ed25519, +-300 s), parsed, deduplicated on its event id and
enqueued for ``apply_event``; only then is it acknowledged, so an event is never lost to a 2xx. The slow
work happens in the worker, which keeps answers well inside Telnyx's 2 s.

The webhook path runs on the event loop and talks to Redis through an asyncio client: a thread per request
(``run_in_threadpool``) with two blocking Redis round trips cost more CPU than the rest of the request
together (bench/webhook_load.py).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis
from nacl.signing import VerifyKey
from redis import asyncio as aioredis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from worker import metrics
from worker.actors import Actors
from worker.broker import build_broker
from worker.errors import SignatureError, StaleTimestamp
from worker.queue_metrics import build_collector
from worker.settings import Settings
from worker.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, load_keys, verify
from worker.store import Store


class BodyTooLarge(Exception):
    pass


class AsyncEnqueue:
    """``RedisBroker.enqueue(message)`` (no delay) over an asyncio Redis client.

    The broker's own dispatch script, with the arguments and middleware hooks its ``enqueue`` uses, so a worker
    gets exactly the job ``Actors.enqueue_event`` would have made. It reads two RedisBroker internals (the
    maintenance draw and the Lua unpack size) of dramatiq 2.x, which pyproject.toml pins below 3.
    """

    def __init__(self, broker: RedisBroker, client: aioredis.Redis) -> None:
        self.broker = broker
        self.dispatch = client.register_script(broker.scripts["dispatch"].script)
        self.unpack_size: int | None = None

    async def __call__(self, message: Message) -> None:
        broker = self.broker
        if self.unpack_size is None:
            # Asks Redis once per process (a blocking call, cached by dramatiq) unless set by the environment.
            self.unpack_size = await run_in_threadpool(broker._max_unpack_size)
        message = message.copy(options={"redis_message_id": str(uuid.uuid4())})
        broker.emit_before("enqueue", message, None)
        await self.dispatch(keys=[broker.namespace], args=[
            "enqueue", current_millis(), message.queue_name, broker.broker_id, broker.heartbeat_timeout,
            broker.dead_message_ttl, broker._should_do_maintenance("enqueue"), self.unpack_size,
            message.options["redis_message_id"], message.encode(),
        ])
        broker.emit_after("enqueue", message, None)


@dataclass
class WebhookReceiver:
    """Verify, parse, dedupe and enqueue one webhook. Free of ASGI so it can be called from anywhere."""

    keys: list[VerifyKey]
    redis: aioredis.Redis
    actors: Actors
    enqueue: AsyncEnqueue
    namespace: str
    tolerance_s: int
    dedupe_ttl_s: int
    clock: Callable[[], float] = time.time

    async def receive(self, body: bytes, signature: str | None, timestamp: str | None) -> tuple[int, str]:
        """Returns ``(HTTP status, result)``; the result is also the metric label."""
        try:
            verify(body, signature, timestamp, self.keys, now=self.clock(), tolerance_s=self.tolerance_s)
        except StaleTimestamp:
            return 401, "stale"
        except SignatureError:
            return 401, "bad_signature"
        event = _parse(body)
        if event is None:
            return 400, "malformed"
        # surrogatepass: a JSON "\ud800" escape yields a str UTF-8 cannot encode; the key stays one per id.
        key = f"{self.namespace}:webhook:{_dedupe_id(event)}".encode("utf-8", "surrogatepass")
        try:
            if not await self.redis.set(key, "1", nx=True, ex=self.dedupe_ttl_s):
                return 200, "duplicate"
            try:
                await self.enqueue(self.actors.apply_event.message(event))
            except Exception:
                # Forget the id so Telnyx's retry is not taken for a duplicate of an event never enqueued.
                await self.redis.delete(key)
                raise
        except redis.RedisError:
            return 503, "unavailable"
        return 200, "accepted"


def _parse(body: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        return None
    data = event.get("data") if isinstance(event, dict) else None
    if not isinstance(data, dict):
        return None
    if data.get("record_type") == "link_clicked":
        return event if data.get("message_id") else None
    if not isinstance(data.get("id"), str) or not isinstance(data.get("event_type"), str):
        return None
    return event


def _dedupe_id(event: dict[str, Any]) -> str:
    data = event["data"]
    if data.get("record_type") == "link_clicked":
        # Link clicks carry no event id; a click is identified by its message, URL and time.
        return f"click:{data.get('message_id')}:{data.get('url')}:{data.get('time_clicked')}"
    return str(data["id"])


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    # Only a hint, the stream is capped below; int() refuses some isdigit() strings ("²", over 4300 digits).
    with contextlib.suppress(ValueError):
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(settings: Settings, *, clock: Callable[[], float] = time.time) -> Starlette:
    """The web app for ``settings``; Redis and the store are opened in the lifespan, not here."""
    keys = load_keys(settings.public_keys)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        broker = build_broker(settings)
        store = Store.from_url(settings.database_url)
        # Made here, in the server's event loop, which is the only loop it may be used from.
        client = aioredis.Redis.from_url(settings.redis_url or "")
        receiver = WebhookReceiver(
            keys=keys, redis=client, actors=Actors(broker), enqueue=AsyncEnqueue(broker, client),
            namespace=settings.namespace, tolerance_s=settings.webhook_tolerance_s,
            dedupe_ttl_s=settings.webhook_dedupe_ttl_s, clock=clock,
        )
        collector, close_collector = build_collector(settings.redis_url or "", settings.namespace, store)
        try:
            yield {"receiver": receiver, "store": store, "redis": broker.client, "collector": collector}
        finally:
            close_collector()
            await client.aclose()
            broker.close()
            store.close()

    async def webhook(request: Request) -> Response:
        receiver: WebhookReceiver = request.state.receiver
        try:
            body = await _read_capped(request, settings.webhook_max_body_bytes)
        except BodyTooLarge:
            metrics.WEBHOOKS.labels("too_large").inc()
            return JSONResponse({"error": "body too large"}, status_code=413)
        except ClientDisconnect:
            return Response(status_code=400)
        status, result = await receiver.receive(
            body, request.headers.get(SIGNATURE_HEADER), request.headers.get(TIMESTAMP_HEADER)
        )
        metrics.WEBHOOKS.labels(result).inc()
        return JSONResponse({"result": result}, status_code=status)

    async def healthz(request: Request) -> Response:
        def check() -> dict[str, str]:
            found = {}
            for name, probe in (("redis", request.state.redis.ping), ("store", request.state.store.ping)):
                try:
                    probe()
                    found[name] = "ok"
                except Exception as exc:
                    found[name] = f"error: {type(exc).__name__}"
            return found

        found = await run_in_threadpool(check)
        healthy = all(v == "ok" for v in found.values())
        return JSONResponse(found, status_code=200 if healthy else 503)

    async def metrics_endpoint(request: Request) -> Response:
        body = await run_in_threadpool(metrics.exposition, settings.prometheus_multiproc_dir,
                                       [request.state.collector])
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    return Starlette(
        routes=[
            Route("/webhooks/telnyx", webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
