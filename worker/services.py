"""What a worker process needs to do its jobs, built once at process start and passed to every job."""

from __future__ import annotations

from dataclasses import dataclass

from worker.errors import ConfigurationError
from worker.settings import Settings
from worker.store import Store
from worker.telnyx import TelnyxClient, Timeouts


@dataclass
class Services:
    """The store and the Telnyx client, with the settings they were built from."""

    settings: Settings
    store: Store
    telnyx: TelnyxClient

    @classmethod
    def build(cls, settings: Settings, store: Store | None = None) -> Services:
        api_key = settings.api_key()
        if not api_key:
            raise ConfigurationError("TELNYX_API_KEY is not set: the worker cannot call Telnyx")
        telnyx = TelnyxClient.build(
            api_key=api_key,
            base_url=settings.telnyx_base_url,
            attempts=settings.http_attempts,
            timeouts=Timeouts(settings.http_timeout_s, settings.http_connect_timeout_s),
        )
        return cls(settings=settings, store=store or Store.from_url(settings.database_url), telnyx=telnyx)

    def close(self) -> None:
        self.telnyx.close()
        self.store.close()
