"""``sendq web``: the ASGI app of the webhook receiver (:mod:`worker.webhooks`), health and metrics.

Redis and the store are opened in the app's lifespan, in the server's event loop: the asyncio Redis client the
webhook path uses may only be used from that loop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from redis import asyncio as aioredis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from worker import metrics
from worker.actors import Actors
from worker.broker import build_broker
from worker.dependencies import Dependencies
from worker.dramatiq_internals import AsyncEnqueue
from worker.queue_metrics import build_collector
from worker.settings import Settings
from worker.signature import load_keys
from worker.store import Store
from worker.webhooks import WebhookBatcher, WebhookEndpoint, WebhookReceiver


def create_app(settings: Settings, *, clock: Callable[[], float] = time.time) -> Starlette:
    """The web app for ``settings``; Redis and the store are opened in the lifespan, not here."""
    keys = load_keys(settings.public_keys)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        broker = build_broker(settings)
        store = Store.from_url(settings.database_url)
        dependencies = Dependencies.of(store=store.ping, redis=broker.client.ping)
        # Made here, in the server's event loop, which is the only loop it may be used from.
        client = aioredis.Redis.from_url(settings.redis_url or "")
        batcher = WebhookBatcher(
            client, Actors(broker), AsyncEnqueue(broker, client), dedupe_ttl_s=settings.webhook_dedupe_ttl_s,
            window_s=settings.webhook_batch_ms / 1000, max_size=settings.webhook_batch_max, store=store,
            dependencies=dependencies,
        )
        receiver = WebhookReceiver(keys=keys, batcher=batcher, namespace=settings.namespace,
                                   tolerance_s=settings.webhook_tolerance_s, clock=clock)
        collector, close_collector = build_collector(settings.redis_url or "", settings.namespace, store)
        try:
            yield {"receiver": receiver, "store": store, "redis": broker.client, "collector": collector,
                   "dependencies": dependencies}
        finally:
            # Before Redis closes: what is still batched is enqueued (or refused with 503), never left waiting.
            await batcher.close()
            close_collector()
            await client.aclose()
            broker.close()
            store.close()

    async def healthz(request: Request) -> Response:
        dependencies: Dependencies = request.state.dependencies

        def check() -> dict[str, str]:
            # Probed now: an outage's start and end are logged once, however often the probe asks.
            for dependency in dependencies.by_name.values():
                dependency.check()
            return dependencies.health()

        found = await run_in_threadpool(check)
        healthy = all(v == "ok" for v in found.values())
        return JSONResponse(found, status_code=200 if healthy else 503)

    async def livez(request: Request) -> Response:
        # Webhooks are accepted while Redis or the store answers, and restarting web brings neither back: the
        # orchestrator's probes ask this, /healthz tells an operator which dependency is down.
        return JSONResponse({"web": "ok"})

    async def metrics_endpoint(request: Request) -> Response:
        body = await run_in_threadpool(metrics.exposition, settings.prometheus_multiproc_dir,
                                       [request.state.collector])
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    return Starlette(
        routes=[
            Route("/webhooks/telnyx", WebhookEndpoint(settings.webhook_max_body_bytes), methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/livez", livez, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
