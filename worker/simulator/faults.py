"""Fault injection for the simulator: 5xx, 429, dropped connections, read timeouts and latency.

A raw ASGI middleware in front of ``/v2/`` (never ``/_sim/``) decides per request, from a seeded
``random.Random``, whether to misbehave, so the same sequence of requests meets the same faults. A request
can also ask for one with ``x-sim-fault: 500|502|503|429|reset|timeout|none`` and ``x-sim-latency-ms: N``.

What each fault means to a client is what matters: 5xx and 429 are answered without processing the request
(nothing is accepted), while ``reset`` and ``timeout`` process it first (the message is accepted, as can
happen with real Telnyx) and then drop the connection part-way through the body, or hold the answer for
``hang_s``. Only an ``Idempotency-Key`` keeps a client's retry of those from sending twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.simulator.http import Refusal, config_from_json, telnyx_error

STATUSES_5XX = ("500", "502", "503")
KINDS = (*STATUSES_5XX, "429", "reset", "timeout")


@dataclass
class FaultConfig:
    """How often each fault happens on a ``/v2/`` request, and the latency added to every one.

    The ``fail_*`` fields are probabilities (their sum at most 1); ``fail_5xx`` picks 500, 502 or 503 evenly.
    Latency is ``latency_ms`` (times a lognormal factor of median 1 when ``latency_sigma`` > 0) plus a
    uniform ``0..latency_jitter_ms``. ``hang_s`` is how long a ``timeout`` holds its answer: make it longer
    than the client's read timeout. ``seed`` None uses the simulator's seed. The default injects nothing.
    """

    fail_5xx: float = 0.0
    fail_429: float = 0.0
    fail_reset: float = 0.0
    fail_timeout: float = 0.0
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    latency_sigma: float = 0.0
    hang_s: float = 30.0
    #: The x-ratelimit-limit and x-ratelimit-reset (seconds) of an injected 429.
    ratelimit_limit: int = 100
    ratelimit_reset_s: int = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        chances = (self.fail_5xx, self.fail_429, self.fail_reset, self.fail_timeout)
        if not all(0.0 <= p <= 1.0 for p in chances) or sum(chances) > 1.0 + 1e-9:
            raise ValueError("fault probabilities must each be within 0..1 and add up to at most 1")
        amounts = (self.latency_ms, self.latency_jitter_ms, self.latency_sigma, self.hang_s, self.ratelimit_reset_s)
        if min(amounts) < 0:
            raise ValueError("latencies, hang_s and ratelimit_reset_s must not be negative")


@dataclass(frozen=True)
class Decision:
    fault: str | None
    latency_s: float


class InjectedReset(ConnectionResetError):
    """Raised after a partial response body so that uvicorn drops the connection."""


class _QuietResets(logging.Filter):
    """Keeps uvicorn from logging a traceback for every reset we inject on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], InjectedReset))


_QUIET_RESETS = _QuietResets()


class Faults:
    """Decides and counts the faults of one simulator; the configuration can be replaced at runtime."""

    def __init__(self, config: FaultConfig, default_seed: int = 0) -> None:
        self.default_seed = default_seed
        self.counts: Counter[str] = Counter()
        self.configure(config)

    def configure(self, config: FaultConfig) -> None:
        """Use ``config`` from now on, restarting the random sequences from its seed."""
        self.config = config
        seed = self.default_seed if config.seed is None else config.seed
        self.random = random.Random(seed)
        # Latency has its own sequence, so turning jitter on or off does not change which requests fail.
        self.latency_random = random.Random(f"{seed}:latency")

    def reset(self) -> None:
        self.counts.clear()
        self.configure(self.config)

    def decide(self, headers: Headers) -> Decision:
        """The fault (None for none) and latency for one request; Refusal on a bad override header."""
        fault = self._fault(headers.get("x-sim-fault"))
        latency_s = self._latency_s(headers.get("x-sim-latency-ms"))
        self.counts["requests"] += 1
        if fault:
            self.counts[fault] += 1
        return Decision(fault, latency_s)

    def summary(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "requests": self.counts["requests"],
                "injected": {kind: self.counts[kind] for kind in KINDS}}

    def refusal(self, fault: str) -> Response:
        """The answer of a 5xx or 429 fault, shaped as Telnyx shapes it."""
        if fault == "429":
            headers = {"x-ratelimit-limit": str(self.config.ratelimit_limit), "x-ratelimit-remaining": "0",
                       "x-ratelimit-reset": str(self.config.ratelimit_reset_s)}
            return telnyx_error(429, "10011", "Too many requests",
                                "You have exceeded the maximum number of allowed requests.", headers=headers)
        return telnyx_error(int(fault), "10007", "Unexpected error",
                            "An unexpected error occurred. This may be a temporary issue on our end; please retry.")

    def _fault(self, override: str | None) -> str | None:
        if override is not None:
            if override not in (*KINDS, "none"):
                raise Refusal(400, "10015", "Bad Request", f"x-sim-fault must be one of {', '.join(KINDS)}, none.")
            return None if override == "none" else override
        c = self.config
        draw = self.random.random()  # exactly one draw per request keeps the sequence reproducible
        for kind, chance in (("5xx", c.fail_5xx), ("429", c.fail_429), ("reset", c.fail_reset),
                             ("timeout", c.fail_timeout)):
            if draw < chance:
                return self.random.choice(STATUSES_5XX) if kind == "5xx" else kind
            draw -= chance
        return None

    def _latency_s(self, override: str | None) -> float:
        if override is not None:
            try:
                return max(0.0, float(override)) / 1000
            except ValueError:
                raise Refusal(400, "10015", "Bad Request", "x-sim-latency-ms must be a number.") from None
        c, rng = self.config, self.latency_random
        base = c.latency_ms * rng.lognormvariate(0.0, c.latency_sigma) if c.latency_sigma > 0 else c.latency_ms
        return (base + (rng.uniform(0.0, c.latency_jitter_ms) if c.latency_jitter_ms > 0 else 0.0)) / 1000


class FaultMiddleware:
    """Raw ASGI middleware applying :class:`Faults` to ``/v2/`` requests; everything else passes through."""

    def __init__(self, app: ASGIApp, faults: Faults) -> None:
        self.app = app
        self.faults = faults
        logging.getLogger("uvicorn.error").addFilter(_QUIET_RESETS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v2/"):
            await self.app(scope, receive, send)
            return
        try:
            decision = self.faults.decide(Headers(scope=scope))
        except Refusal as refusal:
            await refusal.response()(scope, receive, send)
            return
        if decision.latency_s > 0:
            await asyncio.sleep(decision.latency_s)
        if decision.fault is None:
            await self.app(scope, receive, send)
        elif decision.fault in ("reset", "timeout"):
            start, body = await self._processed(scope, receive)
            finish = self._drop if decision.fault == "reset" else self._hang
            await finish(start, body, receive, send)
        else:
            await self.faults.refusal(decision.fault)(scope, receive, send)

    async def _processed(self, scope: Scope, receive: Receive) -> tuple[Message, bytes]:
        """Run the request through the app for real, keeping its answer instead of sending it."""
        sent: list[Message] = []

        async def keep(message: Message) -> None:
            sent.append(message)

        await self.app(scope, receive, keep)
        return sent[0], b"".join(m.get("body", b"") for m in sent[1:])

    async def _drop(self, start: Message, body: bytes, receive: Receive, send: Send) -> None:
        await send(start)
        await send({"type": "http.response.body", "body": body[:len(body) // 2], "more_body": True})
        # With the response started, uvicorn answers an exception by closing the connection: the client sees
        # a body shorter than its Content-Length (httpx: RemoteProtocolError).
        raise InjectedReset("x-sim-fault: reset")

    async def _hang(self, start: Message, body: bytes, receive: Receive, send: Send) -> None:
        try:
            # Waiting on the client rather than sleeping blind lets the server stop once the client gave up.
            await asyncio.wait_for(_disconnected(receive), self.faults.config.hang_s)
            return
        except TimeoutError:
            pass
        await send(start)
        await send({"type": "http.response.body", "body": body})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def routes(faults: Faults) -> list[Route]:
    """``GET /_sim/faults``: configuration and counts; ``POST`` a FaultConfig JSON object to replace it."""

    async def show(request: Request) -> Response:
        return JSONResponse(faults.summary())

    async def change(request: Request) -> Response:
        try:
            faults.configure(config_from_json(FaultConfig, await request.json()))
        except (ValueError, TypeError) as exc:
            return telnyx_error(400, "10015", "Bad Request", str(exc))
        return JSONResponse(faults.summary())

    return [Route("/_sim/faults", show, methods=["GET"]), Route("/_sim/faults", change, methods=["POST"])]
