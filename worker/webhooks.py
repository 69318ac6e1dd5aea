"""Receiving Telnyx webhooks: ``POST /webhooks/telnyx`` of ``sendq web`` (:mod:`worker.web`).

A webhook is read with a size cap, verified (Ed25519, +-300 s), parsed, deduplicated on its event id and
enqueued for ``apply_events``; only then is it acknowledged, so an event is never lost to a 2xx. The slow
work happens in the worker, which keeps answers well inside Telnyx's 2 s.

While Redis is down (a batch's dedupe or enqueue fails), the batch is kept in the store's ``events`` table instead,
unapplied, and answered 2xx once committed: the scheduler's sweep applies it (:func:`worker.events.apply_parked_known`)
and the table's key dedupes it against a copy that comes through Redis later. Only with both down is the answer 503.
The outage is logged when it starts and when it ends (:mod:`worker.dependencies`), not per batch.

Verified events are group-committed (:class:`WebhookBatcher`): the events that arrive within
``SENDQ_WEBHOOK_BATCH_MS`` of a batch's first one are deduplicated in one Redis round trip and enqueued as one
``apply_events`` job, and every request of the batch is answered when that job is in Redis. Two Redis round
trips per batch instead of two per request is most of what a request cost (bench/webhook_load.py).

The webhook path runs on the event loop and talks to Redis through an asyncio client: a thread per request
(``run_in_threadpool``) with two blocking Redis round trips cost more CPU than the rest of the request
together (bench/webhook_load.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis
from dramatiq import Message
from nacl.signing import VerifyKey
from redis import asyncio as aioredis
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from worker import metrics
from worker.actors import Actors
from worker.dependencies import REDIS, STORE, Dependencies, Dependency, unavailable
from worker.errors import SignatureError, StaleTimestamp
from worker.events import event_id, keep_events
from worker.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from worker.store import Store


class BodyTooLarge(Exception):
    pass


ACCEPTED, DUPLICATE, UNAVAILABLE = "accepted", "duplicate", "unavailable"
#: While Redis is down, one batch this often tries it before falling back to the store.
REDIS_RETRY_S = 0.5


class _Untracked:
    """Stands for a dependency the batcher was not told about (built bare, in tests): up, and tracks nothing."""

    up = True

    def failed(self, error: BaseException | str) -> None:
        pass

    def recovered(self) -> None:
        pass


#: A batch is flushed early once its bodies add up to this, so one job stays a few MiB at most even when every
#: webhook is near the body cap.
BATCH_MAX_BYTES = 1 << 20
#: How long a failed batch tries to delete its dedupe keys before answering 503 anyway.
FORGET_TIMEOUT_S = 1.0
#: How long shutdown waits for batches in flight before failing their requests.
CLOSE_TIMEOUT_S = 10.0


class WebhookBatcher:
    """Group commit of verified events: one dedupe round trip and one ``apply_events`` job per batch.

    :meth:`submit` adds an event and waits for its batch. A batch is flushed ``window_s`` after its first event,
    or at once when it holds ``max_size`` events (or ``BATCH_MAX_BYTES``); batches flush concurrently, and SET NX
    decides between two deliveries of one id wherever they land. Lives on one event loop; made in the lifespan.
    """

    def __init__(self, redis: aioredis.Redis, actors: Actors, enqueue: Callable[[Message[Any]], Awaitable[None]], *,
                 dedupe_ttl_s: int, window_s: float, max_size: int, store: Store | None = None,
                 dependencies: Dependencies | None = None) -> None:
        self.redis, self.actors, self.enqueue = redis, actors, enqueue
        self.dedupe_ttl_s, self.window_s, self.max_size = dedupe_ttl_s, window_s, max_size
        #: Where a batch goes when Redis fails: kept unapplied for the scheduler's sweep (None: answer 503).
        self.store = store
        self.dependencies = dependencies or Dependencies([])
        self._redis_tried = 0.0
        self._keys: list[bytes] = []
        self._events: list[dict[str, Any]] = []
        self._waiters: list[asyncio.Future[str]] = []
        self._bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task[None]] = set()
        self._closed = False
        # One child per label, looked up once: labels() takes a lock and builds a tuple on every call.
        self._counters = {r: metrics.WEBHOOKS.labels(r) for r in (ACCEPTED, DUPLICATE, UNAVAILABLE)}

    async def submit(self, key: bytes, event: dict[str, Any], size: int) -> str:
        """``accepted`` once ``event`` is in a queued job, ``duplicate`` if ``key`` was seen, ``unavailable`` if
        Redis failed (nothing acknowledged: the caller answers 503 and Telnyx retries). Counted in the metric."""
        if self._closed:
            self._counters[UNAVAILABLE].inc()
            return UNAVAILABLE
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._keys.append(key)
        self._events.append(event)
        self._waiters.append(waiter)
        self._bytes += size
        if len(self._keys) >= self.max_size or self._bytes >= BATCH_MAX_BYTES:
            self._flush_now()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.window_s, self._flush_now)
        return await waiter

    def _flush_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._keys:
            return
        batch = (self._keys, self._events, self._waiters)
        self._keys, self._events, self._waiters, self._bytes = [], [], [], 0
        task = asyncio.get_running_loop().create_task(self._flush(*batch))
        # The loop keeps only weak references to tasks; this one must live until every waiter has its answer.
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _flush(self, keys: list[bytes], events: list[dict[str, Any]],
                     waiters: list[asyncio.Future[str]]) -> None:
        try:
            results = await self._commit_or_keep(keys, events)
        except asyncio.CancelledError:
            # Shutdown gave up on a Redis (or store) that does not answer; the same answer as both down.
            results = [UNAVAILABLE] * len(keys)
        except Exception as exc:
            # A bug: each request fails as a single one would (500, logged by the server), never hangs.
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        for result, count in Counter(results).items():
            self._counters[result].inc(count)
        for waiter, result in zip(waiters, results, strict=True):
            # Done already: its request was cancelled (client gone); the event is queued all the same.
            if not waiter.done():
                waiter.set_result(result)

    async def _commit_or_keep(self, keys: list[bytes], events: list[dict[str, Any]]) -> list[str]:
        """Through Redis (dedupe, then one job), or into the store when Redis fails or is known down."""
        if self._skip_redis():
            return await self._keep(events)
        try:
            results = await self._commit(keys, events)
        except redis.RedisError as exc:
            outage = unavailable(exc)
            self._dependency(REDIS).failed(outage.reason if outage else f"{type(exc).__name__}: {exc}")
            return await self._keep(events)
        self._dependency(REDIS).recovered()
        return results

    def _dependency(self, name: str) -> Dependency | _Untracked:
        found = self.dependencies.by_name.get(name)
        return found if found is not None else _Untracked()

    def _skip_redis(self) -> bool:
        """While Redis is known down, batches go straight to the store; one every :data:`REDIS_RETRY_S` tries
        Redis first, and the first that gets through ends the outage."""
        if self.store is None or self._dependency(REDIS).up:
            return False
        now = time.monotonic()
        if now - self._redis_tried >= REDIS_RETRY_S:
            self._redis_tried = now
            return False
        return True

    async def _keep(self, events: list[dict[str, Any]]) -> list[str]:
        """Redis failed: keep the batch in the store's events table, unapplied (the scheduler's sweep applies it,
        and its key dedupes it against a copy that comes through Redis); ``unavailable`` when the store fails too."""
        if self.store is None:
            return [UNAVAILABLE] * len(events)
        try:
            fresh = await run_in_threadpool(keep_events, self.store, events)
        except Exception as exc:
            outage = unavailable(exc)
            if outage is None:
                raise
            self._dependency(STORE).failed(outage.reason)
            return [UNAVAILABLE] * len(events)
        self._dependency(STORE).recovered()
        return [ACCEPTED if new else DUPLICATE for new in fresh]

    async def _commit(self, keys: list[bytes], events: list[dict[str, Any]]) -> list[str]:
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            # execute_command, not pipe.set: set()'s argument checks were a visible share of a batch's CPU.
            pipe.execute_command("SET", key, b"1", "NX", "EX", self.dedupe_ttl_s)
        try:
            fresh = await pipe.execute()
        except BaseException:
            # Which SETs Redis applied is unknown: forget them all, or a retry of an event never enqueued would be
            # taken for a duplicate. A key of an event accepted elsewhere may go too; the store dedupes that one.
            await self._forget(keys)
            raise
        mine = [key for key, done in zip(keys, fresh, strict=True) if done]
        if mine:
            try:
                # One key twice in a batch: the first SET NX wins, the second is a duplicate, as across batches.
                await self.enqueue(self.actors.apply_events.message([e for e, done in zip(events, fresh, strict=True)
                                                                     if done]))
            except BaseException:
                await self._forget(mine)
                raise
        return [ACCEPTED if done else DUPLICATE for done in fresh]

    async def _forget(self, keys: list[bytes]) -> None:
        # Best effort, and bounded: Redis is likely the reason we are here.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(FORGET_TIMEOUT_S):
                await self.redis.delete(*keys)

    async def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Flush what is waiting and wait for the batches in flight; after ``timeout_s`` they are cancelled, and
        their requests answered ``unavailable``. Later submits are answered ``unavailable`` at once."""
        self._closed = True
        self._flush_now()
        if not self._flushing:
            return
        _, stuck = await asyncio.wait(set(self._flushing), timeout=timeout_s)
        for task in stuck:
            task.cancel()
        if stuck:
            await asyncio.wait(stuck)


@dataclass
class WebhookReceiver:
    """Verify, parse, dedupe and enqueue one webhook. Free of ASGI so it can be called from anywhere."""

    keys: list[VerifyKey]
    batcher: WebhookBatcher
    namespace: str
    tolerance_s: int
    clock: Callable[[], float] = time.time

    async def receive(self, body: bytes, signature: str | None, timestamp: str | None) -> tuple[int, str]:
        """Returns ``(HTTP status, result)``; the result is also the metric label (the batcher counts
        ``accepted``, ``duplicate`` and ``unavailable``, the caller the rest)."""
        try:
            verify(body, signature, timestamp, self.keys, now=self.clock(), tolerance_s=self.tolerance_s)
        except StaleTimestamp:
            return 401, "stale"
        except SignatureError:
            return 401, "bad_signature"
        event = _parse(body)
        if event is None:
            return 400, "malformed"
        # The id the store keeps the event under. An empty id (which the store does not keep) still dedupes as
        # itself. surrogatepass: a JSON "\ud800" escape yields a str UTF-8 cannot encode; the key stays one per id.
        key = f"{self.namespace}:webhook:{event_id(event) or ''}".encode("utf-8", "surrogatepass")
        result = await self.batcher.submit(key, event, len(body))
        return (503 if result == UNAVAILABLE else 200), result


def _parse(body: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        return None
    if not isinstance(event, dict):
        return None
    data = event.get("data")
    if not isinstance(data, dict):
        return None
    if data.get("record_type") == "link_clicked":
        return event if data.get("message_id") else None
    if not isinstance(data.get("id"), str) or not isinstance(data.get("event_type"), str):
        return None
    return event


#: The answers, encoded once: building a JSONResponse per request was a measurable share of a request's CPU.
_ANSWERS = {result: b'{"result":"%s"}' % result.encode() for result in (
    ACCEPTED, DUPLICATE, UNAVAILABLE, "bad_signature", "stale", "malformed")}
_TOO_LARGE = b'{"error":"body too large"}'
_WANTED = {b"content-length", SIGNATURE_HEADER.encode(), TIMESTAMP_HEADER.encode()}


class WebhookEndpoint:
    """``POST /webhooks/telnyx`` as a bare ASGI app under Starlette's routing.

    A Starlette function endpoint builds a Request, its State and a Response per call; on this path they cost more
    CPU than the JSON parse (py-spy, bench/webhook_load.py), and the receiver needs none of them.
    """

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes
        self._counters = {r: metrics.WEBHOOKS.labels(r) for r in ("too_large", "bad_signature", "stale", "malformed")}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        receiver: WebhookReceiver = scope["state"]["receiver"]
        headers: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            # The first of repeated headers, read as latin-1: what Starlette's request.headers.get returns.
            if name in _WANTED and name not in headers:
                headers[name] = value.decode("latin-1")
        try:
            body = await _read_capped(receive, headers.get(b"content-length"), self.max_body_bytes)
        except BodyTooLarge:
            self._counters["too_large"].inc()
            return await _answer(send, 413, _TOO_LARGE)
        except ClientDisconnect:
            return await _answer(send, 400, b"")
        status, result = await receiver.receive(body, headers.get(SIGNATURE_HEADER.encode()),
                                                headers.get(TIMESTAMP_HEADER.encode()))
        if result in self._counters:  # the batcher counts accepted, duplicate and unavailable
            self._counters[result].inc()
        await _answer(send, status, _ANSWERS[result])


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def _read_capped(receive: Receive, declared: str | None, limit: int) -> bytes:
    # Only a hint, the stream is capped below; int() refuses some isdigit() strings ("²", over 4300 digits).
    with contextlib.suppress(ValueError):
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
