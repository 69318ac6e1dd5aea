"""Delivering signed webhooks the way Telnyx does: per-message URL first, up to 3 attempts per URL with
exponential backoff, then the failover URL; any non-2xx answer counts as a failure."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
import uuid
from typing import Any

import httpx

from worker.signature import Signer
from worker.simulator.state import now_iso

log = logging.getLogger(__name__)

ATTEMPTS_PER_URL = 3
#: Deliveries in flight at once. Beyond this they wait their turn here: without the bound a burst of events
#: queued inside httpx's pool, ran into its pool timeout and was counted as failed deliveries (then retried,
#: then given up), which a receiver that was merely busy does not deserve.
MAX_CONCURRENT_DELIVERIES = 32


def event(event_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A Telnyx event envelope around a snapshot of ``payload``."""
    return {
        "data": {
            "event_type": event_type,
            "id": str(uuid.uuid4()),
            "occurred_at": now_iso(),
            "payload": copy.deepcopy(payload),
            "record_type": "event",
        },
        "meta": {"attempt": 1, "delivered_to": None},
    }


class WebhookSender:
    def __init__(self, http: httpx.AsyncClient, signer: Signer, *, retry_base_s: float,
                 concurrency: int = MAX_CONCURRENT_DELIVERIES) -> None:
        self.http = http
        self.signer = signer
        self.retry_base_s = retry_base_s
        self.slots = asyncio.Semaphore(concurrency)
        #: Every delivery attempt: (event id, url, HTTP status or error) for tests to inspect.
        self.attempts: list[dict[str, Any]] = []

    async def deliver(self, envelope: dict[str, Any], urls: list[str]) -> bool:
        """Try each URL in turn; True once one answers 2xx."""
        for url in urls:
            for attempt in range(1, ATTEMPTS_PER_URL + 1):
                if await self._post(envelope, url, attempt):
                    return True
                if attempt < ATTEMPTS_PER_URL:
                    await asyncio.sleep(self.retry_base_s * 2 ** (attempt - 1))
        return False

    async def _post(self, envelope: dict[str, Any], url: str, attempt: int) -> bool:
        envelope = {**envelope, "meta": {"attempt": attempt, "delivered_to": url}}
        body = json.dumps(envelope).encode()
        async with self.slots:
            # Signed once it may go, so a long wait for a slot cannot make the timestamp stale.
            headers = {"content-type": "application/json", **self.signer.headers(body, int(time.time()))}
            try:
                response = await self.http.post(url, content=body, headers=headers)
                result: int | str = response.status_code
            except httpx.HTTPError as exc:
                result = type(exc).__name__
        self.attempts.append({"event_id": envelope["data"].get("id"), "url": url, "attempt": attempt,
                              "result": result})
        return isinstance(result, int) and 200 <= result < 300
