"""What a worker process needs to do its jobs, built once at process start and passed to every job."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from worker.holds import SenderHolds
from worker.limiter import Limiter
from worker.settings import Settings
from worker.store import Store
from worker.telnyx import TelnyxClient


@dataclass
class Services:
    """The store, the Telnyx client and the rate limiter, with the settings they were built from.

    ``limiter`` and ``holds`` are None only where nothing is rate limited or held (a worker built without
    Redis, in tests of the send path alone).
    """

    settings: Settings
    store: Store
    telnyx: TelnyxClient
    limiter: Limiter | None = None
    holds: SenderHolds | None = None

    @classmethod
    def build(cls, settings: Settings, *, redis_client: redis.Redis | None = None,
              store: Store | None = None) -> Services:
        """``redis_client`` is the broker's own connection pool: the limiter shares it."""
        return cls(
            settings=settings,
            store=store or Store.from_url(settings.database_url),
            telnyx=TelnyxClient.from_settings(settings),
            limiter=Limiter.from_settings(redis_client, settings) if redis_client is not None else None,
            holds=SenderHolds(redis_client, settings.namespace) if redis_client is not None else None,
        )

    def close(self) -> None:
        self.telnyx.close()
        self.store.close()
