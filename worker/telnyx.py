"""Telnyx Messaging API v2 client on httpx.

The HTTP seam is injected (``http=httpx.Client(...)``), so tests point it at the simulator or give it a
``MockTransport``. This is the one module that sees ``httpx`` exceptions and HTTP statuses; it translates
them once into :mod:`worker.errors`. One call is retried in-process (tenacity, bounded and jittered) on
429, 5xx and transport failures, always with the same ``Idempotency-Key``; anything longer is the job's
business.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import tenacity

from worker.errors import ApiError, TelnyxError, TelnyxRefused, TelnyxUnavailable

#: In-call retry delays: exponential from this base, capped, with full jitter on the top quarter.
RETRY_BASE_S = 0.25
RETRY_CAP_S = 2.0
#: A server's retry hint longer than this is left to the job queue instead of sleeping on it.
MAX_IN_CALL_WAIT_S = 5.0

#: Failures after which the request cannot have reached Telnyx, so a retry is certainly not a duplicate.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class Timeouts:
    total_s: float = 10.0
    connect_s: float = 5.0

    def to_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(self.total_s, connect=self.connect_s)


def parse_errors(response: httpx.Response) -> list[ApiError]:
    """Telnyx errors from a response: the ``errors`` array, a lone error object, or the bare status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    raw: list[Any] = []
    if isinstance(body, dict):
        raw = body["errors"] if isinstance(body.get("errors"), list) else [body] if "code" in body else []
    found = [
        ApiError(code=str(e.get("code", "")), title=str(e.get("title", "")), detail=e.get("detail"),
                 meta=e.get("meta") or {})
        for e in raw if isinstance(e, dict)
    ]
    return found or [ApiError(code=str(response.status_code), title=response.reason_phrase or "HTTP error")]


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``Retry-After`` or Telnyx's ``x-ratelimit-reset``, if either is usable."""
    for name in ("retry-after", "x-ratelimit-reset"):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value)
        except ValueError:
            continue
        if seconds >= 0:
            return seconds
    return None


def error_for(response: httpx.Response) -> TelnyxError:
    errors = parse_errors(response)
    summary = f"Telnyx {response.request.method} {response.request.url.path} -> {response.status_code}: " + \
        "; ".join(f"{e.code} {e.title}" for e in errors)
    if response.status_code == 429 or response.status_code >= 500:
        return TelnyxUnavailable(summary, status=response.status_code, errors=errors,
                                 retry_after_s=retry_after(response.headers))
    return TelnyxRefused(summary, status=response.status_code, errors=errors)


def _wait(state: tenacity.RetryCallState) -> float:
    error = state.outcome.exception() if state.outcome else None
    hint = getattr(error, "retry_after_s", None)
    if hint is not None and hint <= MAX_IN_CALL_WAIT_S:
        return hint
    backoff = min(RETRY_CAP_S, RETRY_BASE_S * 2 ** (state.attempt_number - 1))
    return backoff * (0.75 + random.random() / 4)


def _retryable(error: BaseException) -> bool:
    if not isinstance(error, TelnyxUnavailable):
        return False
    return error.retry_after_s is None or error.retry_after_s <= MAX_IN_CALL_WAIT_S


class TelnyxClient:
    """Typed access to the Telnyx operations sendq uses.

    Parameters:
      http: the ``httpx.Client`` to send with (owned by the caller, who closes it).
      api_key: bearer key.
      base_url: API root including ``/v2``.
      attempts: tries of one call, counting the first, before :class:`TelnyxUnavailable` escapes.
    """

    def __init__(self, http: httpx.Client, *, api_key: str, base_url: str, attempts: int = 3) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.attempts = max(1, attempts)
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}

    @classmethod
    def build(cls, *, api_key: str, base_url: str, attempts: int = 3, timeouts: Timeouts | None = None,
              transport: httpx.BaseTransport | None = None) -> TelnyxClient:
        http = httpx.Client(timeout=(timeouts or Timeouts()).to_httpx(), transport=transport,
                            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20))
        return cls(http, api_key=api_key, base_url=base_url, attempts=attempts)

    def close(self) -> None:
        self.http.close()

    # -- operations -----------------------------------------------------------------------------------

    def send(self, endpoint: str, body: Mapping[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        """POST a message to ``endpoint`` (e.g. ``/messages``); returns the ``data`` object."""
        return self._data(self.request("POST", endpoint, json=body, idempotency_key=idempotency_key))

    def retrieve_message(self, telnyx_id: str) -> dict[str, Any]:
        """GET ``/messages/{id}`` (Telnyx keeps messages for 10 days)."""
        return self._data(self.request("GET", f"/messages/{telnyx_id}"))

    # -- transport ------------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
                idempotency_key: str | None = None) -> Any:
        """One API call with in-call retries; returns the decoded JSON body (None when empty)."""
        headers = dict(self._headers)
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=_wait,
            retry=tenacity.retry_if_exception(_retryable),
            reraise=True,
        )
        return retrying(self._once, method, self.base_url + path, headers, json, params)

    def _once(self, method: str, url: str, headers: dict[str, str], json: Any,
              params: Mapping[str, Any] | None) -> Any:
        try:
            response = self.http.request(method, url, headers=headers, json=json, params=params)
        except _NOT_SENT as exc:
            raise TelnyxUnavailable(f"Telnyx unreachable: {exc!r}") from exc
        except httpx.TransportError as exc:
            # Timed out or dropped after the request went out: Telnyx may have acted on it.
            raise TelnyxUnavailable(f"Telnyx call failed mid-flight: {exc!r}", ambiguous=True) from exc
        if response.is_error:
            raise error_for(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise TelnyxUnavailable(f"Telnyx sent a body that is not JSON ({response.status_code})",
                                    status=response.status_code, ambiguous=True) from exc

    @staticmethod
    def _data(body: Any) -> dict[str, Any]:
        if isinstance(body, dict) and isinstance(body.get("data"), dict):
            return body["data"]
        if isinstance(body, dict):
            return body
        raise TelnyxError(f"unexpected Telnyx response: {body!r:.200}")
