"""``sendq web``: the webhook receiver's app (:mod:`worker.web`) served by uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from worker.embedded import resolve_redis
from worker.errors import StoreUnavailable
from worker.settings import Settings
from worker.store import Store
from worker.web import create_app

log = logging.getLogger("sendq")


def run_web(settings: Settings, *, host: str, port: int) -> int:
    """Serve webhooks, ``/healthz``, ``/livez`` and ``/metrics`` on ``host:port`` until stopped; the exit code."""
    settings, embedded = resolve_redis(settings)
    store = Store.from_url(settings.database_url)
    try:
        store.migrate()
    except StoreUnavailable as exc:
        # Webhooks need only Redis: serve them, and leave the schema to the processes that need the store.
        log.warning("web: the store is unavailable (%s); webhooks are accepted through Redis meanwhile", exc.reason)
    finally:
        store.close()
    if not settings.public_keys:
        log.warning("TELNYX_PUBLIC_KEY is not set: every webhook will be refused with 401")
    try:
        log.info("web: webhooks at http://%s:%d/webhooks/telnyx, /healthz, /livez and /metrics", host, port)
        # log_config=None: uvicorn's records go through sendq's handler (one line, JSON when asked, redacted).
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", log_config=None)
    finally:
        if embedded:
            embedded.close()
    return 0
