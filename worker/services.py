"""What a worker process needs to do its jobs, built once at process start and passed to every job."""

from __future__ import annotations

from dataclasses import dataclass

from worker.settings import Settings
from worker.store import Store
from worker.telnyx import TelnyxClient


@dataclass
class Services:
    """The store and the Telnyx client, with the settings they were built from."""

    settings: Settings
    store: Store
    telnyx: TelnyxClient

    @classmethod
    def build(cls, settings: Settings, store: Store | None = None) -> Services:
        telnyx = TelnyxClient.from_settings(settings)
        return cls(settings=settings, store=store or Store.from_url(settings.database_url), telnyx=telnyx)

    def close(self) -> None:
        self.telnyx.close()
        self.store.close()
