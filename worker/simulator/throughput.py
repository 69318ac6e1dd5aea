"""Per-sender throughput as Telnyx meters it: a FIFO queue per sender, drained at the sender's MPS.

Telnyx queues messages sent faster than a sender's rate instead of refusing them: the send answer says how long
the message will wait (``wait_seconds``), and only a queue longer than MPS x 14,400 s (4 hours) is refused, with
429 / 40318. The queues here are virtual. A sender remembers when it is next free: its messages leave in order,
each pushing it on by cost / rate (cost: parts for SMS, 1 for MMS). The account's SMS or MMS rate is a calendar
of booked departure slots that a message takes the first free one of, at or after its sender is free, so a slow
sender's backlog never holds up the others. Nothing is limited unless configured, so tests and the demo stay
fast. Every admission is kept on a timeline so benchmarks can check achieved rates here.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import worker.simulator.rules as rules
from worker.simulator.http import Refusal, config_from_json, telnyx_error

SENDER_TYPES = ("long_code", "toll_free", "short_code", "alphanumeric")
#: Telnyx's documented default rates per sender (reference only: the simulator's default is unlimited).
TELNYX_MPS = {"long_code": 0.1, "toll_free": 20.0, "short_code": 1000.0, "alphanumeric": 0.1}
TELNYX_ACCOUNT_MPS = {"sms": 50.0, "mms": 15.0}
#: Telnyx holds queued messages up to 4 hours: the queue bound is MPS x this.
QUEUE_HORIZON_S = 14_400.0


def sender_type(sender: str) -> str:
    """Which of :data:`SENDER_TYPES` meters ``sender``."""
    return rules.sender_kind(sender) or "long_code"


@dataclass
class ThroughputConfig:
    """Rates in messages (SMS parts) per second; a rate that is not set is unlimited.

    ``mps`` is by sender type, ``sender_mps`` by exact sender (it wins); the account rates meter all SMS, or
    all MMS, across senders. ``queue_horizon_s`` bounds the wait a queue may hold (Telnyx: 4 hours).
    """

    mps: dict[str, float] = field(default_factory=dict)
    sender_mps: dict[str, float] = field(default_factory=dict)
    account_sms_mps: float | None = None
    account_mms_mps: float | None = None
    queue_horizon_s: float = QUEUE_HORIZON_S

    def __post_init__(self) -> None:
        unknown = set(self.mps) - set(SENDER_TYPES)
        if unknown:
            raise ValueError(f"unknown sender type(s) {sorted(unknown)}; known: {', '.join(SENDER_TYPES)}")
        rates = [*self.mps.values(), *self.sender_mps.values(), self.account_sms_mps, self.account_mms_mps]
        if any(r is not None and not r > 0 for r in rates) or not self.queue_horizon_s >= 0:
            raise ValueError("rates must be positive and queue_horizon_s not negative")

    def sender_rate(self, sender: str) -> float | None:
        return self.sender_mps.get(sender) or self.mps.get(sender_type(sender))

    def account_rate(self, stream: str) -> float | None:
        return self.account_mms_mps if stream == "mms" else self.account_sms_mps


class QueueFull(Refusal):
    """429 / 40318, with the x-ratelimit headers of the queue that is full."""

    def __init__(self, limit: float | None, reset_s: float) -> None:
        super().__init__(429, "40318", "Message queue full",
                         "The message queue for this sender is full. Wait before resending.")
        self.headers = {"x-ratelimit-limit": f"{limit or 0:g}", "x-ratelimit-remaining": "0",
                        "x-ratelimit-reset": str(max(1, math.ceil(reset_s)))}

    def response(self) -> JSONResponse:
        return telnyx_error(self.status, self.code, self.title, self.detail, headers=self.headers)


class Calendar:
    """Booked departure slots of an account rate, as disjoint sorted intervals (touching ones merged)."""

    EPSILON = 1e-9

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []

    def first_fit(self, earliest: float, width: float) -> float:
        """The earliest start at or after ``earliest`` of a free slot ``width`` long."""
        start = earliest
        i = bisect_right(self.ends, earliest)
        while i < len(self.starts) and self.starts[i] < start + width - self.EPSILON:
            start = max(start, self.ends[i])
            i += 1
        return start

    def book(self, start: float, end: float) -> None:
        """Book a slot that :meth:`first_fit` found free."""
        i = bisect_left(self.starts, start)
        if i > 0 and self.ends[i - 1] >= start - self.EPSILON:
            i -= 1
            start = self.starts.pop(i)
            end = max(end, self.ends.pop(i))
        while i < len(self.starts) and self.starts[i] <= end + self.EPSILON:
            self.starts.pop(i)
            end = max(end, self.ends.pop(i))
        self.starts.insert(i, start)
        self.ends.insert(i, end)

    def forget_before(self, now: float) -> None:
        while self.ends and self.ends[0] <= now:
            del self.starts[0], self.ends[0]


class Throughput:
    """The virtual queues of one simulator and the timeline of every message admitted through them."""

    def __init__(self, config: ThroughputConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}  # sender -> time it is next free
        self._calendars = {"sms": Calendar(), "mms": Calendar()}
        #: {"t", "from", "id", "type", "cost", "departs"} per admitted message, in admission order.
        self.timeline: list[dict[str, Any]] = []
        #: Messages refused with 429 / 40318, by sender.
        self.refused: dict[str, int] = {}

    def reset(self) -> None:
        with self._lock:
            self._next.clear()
            self._calendars = {"sms": Calendar(), "mms": Calendar()}
            self.timeline.clear()
            self.refused.clear()

    def admit(self, payload: dict[str, Any], now: float) -> float:
        """Queue a message built at ``now`` (simulator seconds): its wait in seconds, also set in the payload.

        Sets ``wait_seconds`` and ``valid_until`` (received + the queue horizon: by then it must have left the
        queue). Raises :class:`QueueFull`, changing nothing, when the wait would exceed the horizon.
        """
        sender = payload["from"]["phone_number"]
        stream = "mms" if payload.get("type") == "MMS" else "sms"
        cost = 1 if stream == "mms" else int(payload.get("parts") or 1)
        with self._lock:
            departs = self._schedule(sender, stream, cost, now)
            self.timeline.append({"t": now, "from": sender, "id": payload["id"], "type": stream, "cost": cost,
                                  "departs": departs})
        wait = departs - now
        received = datetime.fromisoformat(payload["received_at"])
        payload["wait_seconds"] = round(wait, 6)
        payload["valid_until"] = (received + timedelta(seconds=self.config.queue_horizon_s)).isoformat(
            timespec="milliseconds")
        return wait

    def _schedule(self, sender: str, stream: str, cost: int, now: float) -> float:
        sender_rate, account_rate = self.config.sender_rate(sender), self.config.account_rate(stream)
        calendar = self._calendars[stream]
        calendar.forget_before(now)
        earliest = max(now, self._next.get(sender, now))
        departs = calendar.first_fit(earliest, cost / account_rate) if account_rate else earliest
        if departs - now > self.config.queue_horizon_s:
            self.refused[sender] = self.refused.get(sender, 0) + 1
            raise QueueFull(account_rate if departs > earliest else sender_rate,
                            departs - now - self.config.queue_horizon_s)
        # Kept for unmetered senders too: the account calendar must not let a message overtake its predecessor.
        self._next[sender] = departs + (cost / sender_rate if sender_rate else 0.0)
        if account_rate:
            calendar.book(departs, departs + cost / account_rate)
        return departs

    def backlog_s(self, sender: str, now: float) -> float:
        """How long the next message of ``sender`` waits for the sender's own queue."""
        return max(0.0, self._next.get(sender, now) - now)

    def account_backlog_s(self, stream: str, now: float) -> float:
        """How long a message free to leave now waits for an account slot."""
        rate = self.config.account_rate(stream)
        return self._calendars[stream].first_fit(now, 1 / rate) - now if rate else 0.0

    def summary(self, now: float, sender: str | None = None) -> dict[str, Any]:
        """Per sender: configured and achieved rate, the most departures in any 1 s window, and the backlog."""
        by_sender: dict[str, list[dict[str, Any]]] = {}
        for entry in list(self.timeline):
            if sender in (None, entry["from"]):
                by_sender.setdefault(entry["from"], []).append(entry)
        return {
            "now": now, "config": asdict(self.config),
            "senders": {name: self._sender_summary(name, entries, now) for name, entries in by_sender.items()},
            "refused": dict(self.refused),
            "account": {stream: {"mps": self.config.account_rate(stream),
                                 "backlog_s": self.account_backlog_s(stream, now)} for stream in ("sms", "mms")},
        }

    def _sender_summary(self, sender: str, entries: list[dict[str, Any]], now: float) -> dict[str, Any]:
        departs = sorted(e["departs"] for e in entries)
        span = departs[-1] - departs[0]
        return {
            "type": sender_type(sender), "mps": self.config.sender_rate(sender),
            "messages": len(entries), "cost": sum(e["cost"] for e in entries),
            "first_departs": departs[0], "last_departs": departs[-1],
            # Departures per second between the first and the last: the rate the queue achieved.
            "rate": (len(departs) - 1) / span if span > 0 else None,
            "max_in_1s": max_in_window([(e["departs"], 1) for e in entries]),
            "max_cost_in_1s": max_in_window([(e["departs"], e["cost"]) for e in entries]),
            "queued": sum(1 for d in departs if d > now), "backlog_s": self.backlog_s(sender, now),
        }


def max_in_window(events: list[tuple[float, int]], window_s: float = 1.0) -> int:
    """The largest total weight of ``(time, weight)`` events within any half-open window of ``window_s``."""
    ordered = sorted(events)
    best = total = 0
    start = 0
    for time_s, weight in ordered:
        total += weight
        while time_s - ordered[start][0] >= window_s:
            total -= ordered[start][1]
            start += 1
        best = max(best, total)
    return best


def routes(throughput: Throughput, clock: Callable[[], float]) -> list[Route]:
    """``GET /_sim/throughput[?from=SENDER]``: per-sender summary; ``POST`` a ThroughputConfig to replace it.

    ``clock`` is the simulator's time (seconds since it started), which the timeline is kept in.
    """

    async def show(request: Request) -> Response:
        return JSONResponse(throughput.summary(clock(), request.query_params.get("from")))

    async def change(request: Request) -> Response:
        try:
            throughput.config = config_from_json(ThroughputConfig, await request.json())
        except (ValueError, TypeError) as exc:
            return telnyx_error(400, "10015", "Bad Request", str(exc))
        return JSONResponse(throughput.summary(clock()))

    return [Route("/_sim/throughput", show, methods=["GET"]), Route("/_sim/throughput", change, methods=["POST"])]
