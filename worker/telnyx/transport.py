"""The HTTP layer of the Telnyx client: auth, JSON, paging, in-call retries and error translation.

This is the one module that sees ``httpx`` exceptions and HTTP statuses; it translates them once into
:mod:`worker.errors`. One call is retried in-process (tenacity, bounded and jittered) on what
:mod:`worker.classify` marks ``RETRY_NOW`` (5xx, 408, 429 10011 and transport failures), always with the same
``Idempotency-Key``; anything longer is the job's business.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Mapping
from typing import Any, cast

import httpx
import tenacity

from worker import metrics
from worker.classify import MAX_IN_CALL_WAIT_S, retryable_in_call
from worker.errors import ApiError, TelnyxError, TelnyxRefused, TelnyxUnavailable

#: In-call retry delays: exponential from this base, capped, with full jitter on the top quarter.
RETRY_BASE_S = 0.25
RETRY_CAP_S = 2.0

#: Failures after which the request cannot have reached Telnyx, so a retry is certainly not a duplicate.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


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
    hint: float | None = getattr(error, "retry_after_s", None)
    if hint is not None and hint <= MAX_IN_CALL_WAIT_S:
        return hint
    backoff: float = min(RETRY_CAP_S, RETRY_BASE_S * 2 ** (state.attempt_number - 1))
    return backoff * (0.75 + random.random() / 4)


def _count_retry(state: tenacity.RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    metrics.RETRIES.labels("call", metrics.status_reason(getattr(error, "status", None))).inc()


def _retryable(error: BaseException) -> bool:
    # worker.classify's table decides (RETRY_NOW rows, with no long wait asked): one source of truth.
    return retryable_in_call(error)


def body(**fields: Any) -> dict[str, Any]:
    """A request body or query: ``from_`` becomes ``from``, absent (None) fields are left out."""
    return {("from" if k == "from_" else k): v for k, v in fields.items() if v is not None}


class Transport:
    """Authenticated JSON calls to the Telnyx API, with bounded in-call retries.

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
            before_sleep=_count_retry,
            reraise=True,
        )
        return retrying(self._once, method, self.base_url + path, headers, json, params)

    def data(self, method: str, path: str, **kwargs: Any) -> Any:
        """The ``data`` member of a call's answer (the whole body when it has none)."""
        body = self.request(method, path, **kwargs)
        if isinstance(body, dict) and "data" in body:
            return body["data"]
        if body is None or isinstance(body, dict):
            return body
        raise TelnyxError(f"unexpected Telnyx response: {body!r:.200}")

    def data_object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """:meth:`data` of an operation Telnyx answers with one JSON object."""
        # The decoded JSON is untyped (httpx's Response.json() is Any); these operations answer with an object.
        return cast(dict[str, Any], self.data(method, path, **kwargs))

    def paginate(self, path: str, params: Mapping[str, Any] | None = None, *,
                 page_size: int = 250) -> Iterator[dict[str, Any]]:
        """Every item of a paged list, fetched lazily one page at a time (``page[number]``, ``meta``)."""
        query = {**(params or {}), "page[size]": page_size}
        page = 1
        while True:
            body = self.request("GET", path, params={**query, "page[number]": page}) or {}
            yield from body.get("data") or []
            meta = body.get("meta") or {}
            total = meta.get("total_pages")
            if not body.get("data") or total is None or page >= int(total):
                return
            page += 1

    def _once(self, method: str, url: str, headers: dict[str, str], json: Any,
              params: Mapping[str, Any] | None) -> Any:
        endpoint, started = metrics.endpoint_label(url[len(self.base_url):]), time.perf_counter()
        try:
            response = self.http.request(method, url, headers=headers, json=json, params=params)
        except _NOT_SENT as exc:
            _observe(method, endpoint, "none", started)
            raise TelnyxUnavailable(f"Telnyx unreachable: {exc!r}") from exc
        except httpx.TransportError as exc:
            _observe(method, endpoint, "none", started)
            # Timed out or dropped after the request went out: Telnyx may have acted on it.
            raise TelnyxUnavailable(f"Telnyx call failed mid-flight: {exc!r}", ambiguous=True) from exc
        _observe(method, endpoint, str(response.status_code), started)
        if response.is_error:
            raise error_for(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise TelnyxUnavailable(f"Telnyx sent a body that is not JSON ({response.status_code})",
                                    status=response.status_code, ambiguous=True) from exc


def _observe(method: str, endpoint: str, status: str, started: float) -> None:
    metrics.TELNYX_REQUESTS.labels(method, endpoint, status).inc()
    metrics.TELNYX_LATENCY.labels(method, endpoint).observe(time.perf_counter() - started)
