"""Sender holds: senders (or the whole account) that may not send for a while, after a Telnyx error that only
an operator can fix (an unhealthy number, a spend limit, a refused API key: see :mod:`worker.classify`).

A hold is a Redis key with a TTL, ``{namespace}:hold:{sender}``: it lapses by itself, every worker sees it at
once, and a restarted worker forgets nothing. The send path asks :meth:`SenderHolds.check` before it sends and
leaves a held sender's messages waiting in the queue, instead of failing them one by one against an error that
will not go away. Each hold counts in ``sendq_sender_holds_total{code}`` and logs one WARNING saying what to do.
"""

from __future__ import annotations

import builtins  # builtins.list in signatures below the class's own list() method, which shadows it there
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from worker import metrics
from worker.queue_metrics import holds_key

log = logging.getLogger(__name__)

#: The key of an account-wide hold: it holds every sender.
ACCOUNT_KEY = "*"


@dataclass(frozen=True)
class Hold:
    sender: str
    seconds_left: float
    reason: str
    code: str | None
    since: str | None

    def as_dict(self) -> dict[str, object]:
        return {"sender": self.sender, "seconds_left": round(self.seconds_left, 3), "reason": self.reason,
                "code": self.code, "since": self.since}


class SenderHolds:
    """The holds of one deployment (``namespace``).

    ``sender`` is the sender as operators name it: a number, short code or alphanumeric ID, or for number pools
    the messaging profile id (as ``sendq limits`` names them); :data:`ACCOUNT_KEY` holds every sender.
    """

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.prefix = f"{namespace}:hold:"

    def hold(self, sender: str, seconds: float, reason: str, *, code: str | None = None) -> None:
        """Hold ``sender`` for ``seconds`` (a longer hold already in place is kept); counts and logs it."""
        key = self.prefix + sender
        ttl_ms = max(1, int(seconds * 1000))
        value = json.dumps({"reason": reason, "code": code, "since": datetime.now(UTC).isoformat()})
        # Two workers may race here; either value is right, and a shorter hold never cuts a longer one short.
        if self.client.pttl(key) < ttl_ms:
            self.client.set(key, value, px=ttl_ms)
            self._index(sender, ttl_ms)
        metrics.SENDER_HOLDS.labels(code or "none").inc()
        who = "every sender (account-wide)" if sender == ACCOUNT_KEY else f"sender {sender}"
        log.warning("holding %s for %d s after Telnyx error %s: %s. Its messages wait in the queue; the hold "
                    "lapses by itself, or can be released once fixed.", who, seconds, code or "-", reason)

    def held(self, sender: str) -> tuple[float, str] | None:
        """``(seconds_left, reason)`` while ``sender`` itself is held, else None."""
        found = self._read([sender])
        return (found[0].seconds_left, found[0].reason) if found else None

    def check(self, sender: str | None) -> Hold | None:
        """The hold that stops ``sender`` now, its own or the account's (one round trip); None when free."""
        found = self._read([ACCOUNT_KEY, *([sender] if sender else [])])
        return max(found, key=lambda h: h.seconds_left) if found else None

    def keys(self, sender: str | None) -> list[str]:
        """The Redis keys whose hold stops ``sender`` (the account's and its own), for the limiter's reserve to
        check in the same call."""
        return [self.prefix + ACCOUNT_KEY, *([self.prefix + sender] if sender else [])]

    def list(self) -> list[Hold]:
        """Every hold in force, longest first."""
        names = [key.decode()[len(self.prefix):] for key in self.client.scan_iter(self.prefix + "*", count=500)]
        return sorted(self._read(names), key=lambda h: -h.seconds_left)

    def release(self, sender: str) -> bool:
        """End ``sender``'s hold now; False when it was not held."""
        self.client.zrem(holds_key(self.namespace), sender)
        return bool(self.client.delete(self.prefix + sender))

    def _index(self, sender: str, ttl_ms: int) -> None:
        """Keep the ZSET of held senders (scored by when each hold lapses) that ``sendq_senders_held`` counts,
        so a scrape never scans the keyspace for hold keys."""
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(holds_key(self.namespace), {sender: now + ttl_ms / 1000})
        pipe.zremrangebyscore(holds_key(self.namespace), "-inf", now)
        pipe.execute()

    def _read(self, senders: builtins.list[str]) -> builtins.list[Hold]:
        if not senders:
            return []
        pipe = self.client.pipeline(transaction=False)
        for sender in senders:
            pipe.get(self.prefix + sender)
            pipe.pttl(self.prefix + sender)
        answers = pipe.execute()
        holds = []
        for sender, value, ttl_ms in zip(senders, answers[::2], answers[1::2], strict=True):
            if value is None or ttl_ms <= 0:
                continue  # gone, or expiring between the two reads
            data = json.loads(value)
            holds.append(Hold(sender, ttl_ms / 1000, data.get("reason", ""), data.get("code"), data.get("since")))
        return holds
