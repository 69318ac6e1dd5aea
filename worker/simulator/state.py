"""What the simulator knows: every message it accepted, its outcome, and the idempotency keys it saw."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class SimMessage:
    """One outbound message as the simulator holds it: Telnyx's payload plus the test-facing truth."""

    payload: dict[str, Any]
    request: dict[str, Any]
    idempotency_key: str | None
    #: The final status of each recipient, in ``payload["to"]`` order.
    outcomes: list[str]
    #: The path the message was sent to (``/v2/messages/long_code``, ...).
    endpoint: str = ""
    send_at: datetime | None = None
    cancelled: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.payload["id"])


@dataclass
class Replay:
    fingerprint: str
    response: tuple[int, dict[str, Any]] | None = None  # None while the first request is in flight


class SimState:
    """Thread-safe registry of messages, idempotency keys and arrivals."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages: dict[str, SimMessage] = {}
        self.replays: dict[str, Replay] = {}
        #: (monotonic seconds since start, sender, message id) for every accepted send, in order.
        self.arrivals: list[dict[str, Any]] = []

    def reset(self) -> None:
        with self._lock:
            self.messages.clear()
            self.replays.clear()
            self.arrivals.clear()

    @staticmethod
    def fingerprint(body: Any) -> str:
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def begin(self, key: str, body: Any) -> Replay | str:
        """Start a request under an idempotency key: a Replay to answer from, or 'new'/'busy'/'mismatch'."""
        fingerprint = self.fingerprint(body)
        with self._lock:
            seen = self.replays.get(key)
            if seen is None:
                self.replays[key] = Replay(fingerprint)
                return "new"
            if seen.fingerprint != fingerprint:
                return "mismatch"
            if seen.response is None:
                return "busy"
            return seen

    def finish(self, key: str, body: dict[str, Any] | None) -> None:
        """Record the answer to replay under ``key``; None (a refusal) forgets the key instead."""
        with self._lock:
            if body is not None:
                self.replays[key].response = (200, body)
            else:
                # Only successful responses are replayed (Telnyx's documented behaviour).
                self.replays.pop(key, None)

    def add(self, message: SimMessage, arrived_s: float, departs_s: float | None = None) -> None:
        """Record an accepted message; ``departs_s`` is when it leaves its sender's queue (default: on arrival)."""
        with self._lock:
            self.messages[message.id] = message
            self.arrivals.append({"t": arrived_s, "from": message.payload["from"]["phone_number"],
                                  "profile": message.payload.get("messaging_profile_id"), "id": message.id,
                                  "departs": arrived_s if departs_s is None else departs_s})

    def get(self, message_id: str) -> SimMessage | None:
        with self._lock:
            return self.messages.get(message_id)


def new_message_id() -> str:
    return str(uuid.uuid4())
