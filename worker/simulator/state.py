"""What the simulator knows: every message it accepted or received, its outcome, and the idempotency keys it saw."""

from __future__ import annotations

import hashlib
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: The simulated account's organisation (``organization_id`` of every record).
ORGANIZATION_ID = "9d76d591-1b7d-405d-8c64-1320ee070245"


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


#: Where an idempotency key applies: Telnyx scopes a key to the organisation, the method and the path, so the
#: same key on ``POST /v2/messages`` and ``POST /v2/messages/long_code`` names two different requests.
Scope = tuple[str, str, str]


class SimState:
    """Thread-safe registry of messages, idempotency keys and arrivals."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages: dict[str, SimMessage] = {}
        #: Inbound messages (``message.received``) by id, as ``GET /v2/messages/{id}`` returns them.
        self.inbound: dict[str, dict[str, Any]] = {}
        self.replays: dict[Scope, Replay] = {}
        #: (monotonic seconds since start, sender, message id) for every accepted send, in order.
        self.arrivals: list[dict[str, Any]] = []

    def reset(self) -> None:
        with self._lock:
            self.messages.clear()
            self.inbound.clear()
            self.replays.clear()
            self.arrivals.clear()

    @staticmethod
    def fingerprint(raw_body: bytes) -> str:
        """What a reused key is compared on: the request body as sent, byte for byte (not re-serialised JSON,
        which would take a reordered or re-spaced body for the same request)."""
        return hashlib.sha256(raw_body).hexdigest()

    def begin(self, key: Scope, raw_body: bytes) -> Replay | str:
        """Start a request under an idempotency key: a Replay to answer from, or 'new'/'busy'/'mismatch'."""
        fingerprint = self.fingerprint(raw_body)
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

    def finish(self, key: Scope, body: dict[str, Any] | None) -> None:
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

    def add_inbound(self, payload: dict[str, Any]) -> None:
        with self._lock:
            self.inbound[str(payload["id"])] = payload

    def payload(self, message_id: str) -> dict[str, Any] | None:
        """The payload of any message, outbound or inbound, by id."""
        with self._lock:
            found = self.messages.get(message_id)
            return found.payload if found else self.inbound.get(message_id)


def new_message_id() -> str:
    return str(uuid.uuid4())
