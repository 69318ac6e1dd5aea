"""``TelnyxClient``: one object per process, holding the connection pool and every operation group."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from worker.errors import ConfigurationError
from worker.settings import Settings
from worker.telnyx.messages import Messages
from worker.telnyx.numbers import Numbers
from worker.telnyx.optouts import OptOuts
from worker.telnyx.profiles import Profiles
from worker.telnyx.transport import Transport


@dataclass(frozen=True)
class Timeouts:
    total_s: float = 10.0
    connect_s: float = 5.0

    def to_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(self.total_s, connect=self.connect_s)


class TelnyxClient:
    """Typed access to the Telnyx operations sendq uses, grouped as the official SDK groups them."""

    def __init__(self, http: httpx.Client, *, api_key: str, base_url: str, attempts: int = 3) -> None:
        self.http = http
        self.transport = Transport(http, api_key=api_key, base_url=base_url, attempts=attempts)
        self.messages = Messages(self.transport)
        self.optouts = OptOuts(self.transport)
        self.numbers = Numbers(self.transport)
        self.profiles = Profiles(self.transport)

    @classmethod
    def build(cls, *, api_key: str, base_url: str, attempts: int = 3, timeouts: Timeouts | None = None,
              transport: httpx.BaseTransport | None = None) -> TelnyxClient:
        http = httpx.Client(timeout=(timeouts or Timeouts()).to_httpx(), transport=transport,
                            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20))
        return cls(http, api_key=api_key, base_url=base_url, attempts=attempts)

    @classmethod
    def from_settings(cls, settings: Settings) -> TelnyxClient:
        """The client a sendq process uses; refuses to exist without an API key."""
        api_key = settings.api_key()
        if not api_key:
            raise ConfigurationError("TELNYX_API_KEY is not set: sendq cannot call Telnyx")
        return cls.build(api_key=api_key, base_url=settings.telnyx_base_url, attempts=settings.http_attempts,
                         timeouts=Timeouts(settings.http_timeout_s, settings.http_connect_timeout_s))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> TelnyxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
