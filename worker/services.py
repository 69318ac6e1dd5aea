"""What a worker process needs to do its jobs, built once at process start and passed to every job."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import dramatiq
import redis

from worker.holds import SenderHolds
from worker.hooks import Hooks
from worker.limiter import Limiter
from worker.outcomes import Outcomes
from worker.sender_usage import UsageRecorder
from worker.settings import Settings
from worker.store import Store
from worker.suppressions import Suppressions
from worker.telnyx import TelnyxClient


@dataclass
class Services:
    """The store, the Telnyx client and the rate limiter, with the settings they were built from.

    ``limiter`` and ``holds`` are None only where nothing is rate limited or held (a worker built without
    Redis, in tests of the send path alone); ``hooks`` do nothing unless built with a broker.
    """

    settings: Settings
    store: Store
    telnyx: TelnyxClient
    limiter: Limiter | None = None
    holds: SenderHolds | None = None
    hooks: Hooks = field(default_factory=Hooks.disabled)

    @classmethod
    def build(cls, settings: Settings, *, redis_client: redis.Redis | None = None,
              store: Store | None = None, broker: dramatiq.Broker | None = None) -> Services:
        """``redis_client`` is the broker's own connection pool: the limiter shares it (``broker.client`` when
        only ``broker`` is given). ``broker`` also carries the application hooks (SENDQ_*_ACTOR)."""
        if redis_client is None and broker is not None:
            redis_client = getattr(broker, "client", None)
        return cls(
            settings=settings,
            store=store or Store.from_url(settings.database_url),
            telnyx=TelnyxClient.from_settings(settings),
            limiter=Limiter.from_settings(redis_client, settings) if redis_client is not None else None,
            holds=SenderHolds(redis_client, settings.namespace) if redis_client is not None else None,
            hooks=Hooks.from_settings(settings, broker),
        )

    @cached_property
    def usage(self) -> UsageRecorder | None:
        """Sums of the rate each sender type used, for ``sendq_limiter_utilization_ratio`` (None without a limiter)."""
        limiter = self.limiter
        if limiter is None:
            return None
        return UsageRecorder(limiter.client, self.settings.namespace, lambda keys: limiter.rates(keys)[0].mps)

    @cached_property
    def outcomes(self) -> Outcomes:
        """Status changes counted and handed to the status hook (see :mod:`worker.outcomes`)."""
        return Outcomes(self.store, self.hooks)

    @cached_property
    def suppressions(self) -> Suppressions:
        """The suppression list, in the store."""
        return Suppressions.of(self.store)

    def close(self) -> None:
        self.telnyx.close()
        self.store.close()
