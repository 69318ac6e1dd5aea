"""The distributed rate limiter: GCRA slot reservations in one Lua script, on the Redis server's clock.

A sender key holds a TAT (theoretical arrival time, in microseconds of Redis ``TIME``): the earliest moment
its next message may go. A reservation of ``cost`` slots at rate R (interval T = 1/R) may go at
``max(now, TAT - tau)``, tau = (burst - 1) * T (strict spacing by default), and moves the TAT to
``max(TAT, slot) + cost * T``. The account key is a calendar of booked intervals: the message takes the first
free ``cost`` x T_account at or after its sender's slot (why not a TAT: :mod:`worker.limiter_lua`). One EVALSHA
per message checks both and either reserves on both, returning the wait until the slot, or, when that wait is
longer than the caller's ``max_wait_s``, reserves nothing and returns the wait to defer for. The caller sleeps,
or re-enqueues. Burst applies to senders; the account is always strictly spaced.

Keys, under ``{namespace}:rl:`` with one hash tag per sender (a sender's keys share a cluster slot)::

    {ns}:rl:{<type>:<sender>}:tat      the sender's TAT (every message)
    {ns}:rl:{<type>:<sender>}:bulk     the non-urgent TAT, paced at (1 - share) R while urgent traffic is active
    {ns}:rl:{<type>:<sender>}:urgent   set by urgent reservations (granted or not) for wait + urgent_active_s
    {ns}:rl:{account:<sms|mms>}:slots  the account calendar (sorted set of booked intervals)
    {ns}:rl:overrides                  hash: sender or sender type -> live MPS (``sendq limits set``)

Keys expire a second after their last slot, so idle senders leave nothing behind. The reservation touches two hash
tags (sender and account), so on Redis Cluster it needs both in one slot; sendq's broker (dramatiq's Lua
scripts) assumes a single Redis too.

Rates are computed here, in Python, from :class:`worker.limits.RateLimits` and the live overrides, and passed
as ARGV. Overrides are read with one HGETALL at most every ``cache_s`` (1 s) per process, so the hot path is one
Redis call per message and a ``sendq limits set`` reaches every worker within about a second.

**Urgent share.** While a sender has urgent traffic (an urgent reservation, granted or deferred, within
``urgent_active_s`` of its slot), non-urgent reservations must also pass the sender's ``bulk`` TAT, whose
interval is T / (1 - share); urgent reservations check only the shared TAT. So non-urgent traffic takes at most
(1 - share) x R and urgent messages get at least share x R, and the shared TAT is always free share / (1 - share)
x cost x T before the next non-urgent slot: an urgent message competing with the deferred backlog for the next
slot wins it, instead of queueing after the backlog. A TAT has no holes, so an urgent message cannot go before
slots workers already hold: its worst-case wait is the non-urgent lookahead (their ``max_wait_s``, 1 s by
default) plus one non-urgent message's slots (cost x T), however long the backlog; when urgent messages
themselves queue up, they leave at least one per free-share interval, 1 / (share x R), more when non-urgent
traffic leaves room. The first urgent message after a quiet spell may find more than ``max_wait_s`` reserved (a
long message, a 429 push-back) and be deferred once, for that wait; its flag stays up until then, so the slot it
comes back for is its own.

**Telnyx 429 / 40318.** :meth:`Limiter.push_back` moves a sender's TAT to at least now + the reset Telnyx gave,
on the server clock, so every worker backs off, not just the one that got the answer.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from worker.errors import ValidationError
from worker.limiter_lua import BLOCK, PUSH_BACK, RESERVE
from worker.limits import LimitKeys, Rate, RateLimits, check_mps, classify

log = logging.getLogger(__name__)
_LIMITED_BY = {0: None, 1: "sender", 2: "account", 3: "urgent_share", 4: "sender_held"}
US = 1_000_000


@dataclass(frozen=True)
class Reservation:
    """The answer to :meth:`Limiter.reserve`.

    ``granted``: the slot is held; sleep ``wait_s`` then send. Not granted: nothing was reserved and the
    earliest slot is ``wait_s`` away; re-enqueue the job with (about) that delay. ``limited_by`` names the key
    that set the slot (sender, account, urgent_share; None when free now); ``at_us`` is the slot on the Redis
    clock, in microseconds.
    """

    granted: bool
    wait_s: float
    limited_by: str | None
    at_us: int


def interval_us(mps: float) -> int:
    """Microseconds per slot, rounded up so the limiter never runs faster than the rate."""
    return math.ceil(US / mps)


class Overrides:
    """Live per-sender (or per-type) rates in a Redis hash, cached per process for ``cache_s``."""

    def __init__(self, client: redis.Redis, key: str, cache_s: float = 1.0) -> None:
        self.client, self.key, self.cache_s = client, key, cache_s
        self._cached: tuple[float, dict[str, float]] = (-math.inf, {})
        self._lock = threading.Lock()

    def get(self) -> dict[str, float]:
        """The overrides as of at most ``cache_s`` ago (one HGETALL when the cache is stale)."""
        expires, values = self._cached
        if time.monotonic() < expires:
            return values
        with self._lock:
            expires, values = self._cached
            if time.monotonic() >= expires:
                values = self.fresh()
                self._cached = (time.monotonic() + self.cache_s, values)
        return values

    def fresh(self) -> dict[str, float]:
        """The overrides as stored now; an entry that is not a positive number (written by hand) is ignored."""
        found = {}
        for name, value in self.client.hgetall(self.key).items():
            try:
                found[_text(name)] = check_mps(float(value), "mps")
            except (ValueError, ValidationError):
                log.warning("ignoring the rate override %r = %r: not a positive number", name, value)
        return found

    def set(self, name: str, mps: float) -> None:
        classify(name)
        self.client.hset(self.key, name, repr(check_mps(mps, "mps")))
        self._cached = (-math.inf, {})

    def reset(self, name: str) -> bool:
        """Remove ``name``'s override; True if there was one."""
        removed = bool(self.client.hdel(self.key, name))
        self._cached = (-math.inf, {})
        return removed


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Limiter:
    """Sender and account rate limits shared by every worker through one Redis."""

    def __init__(self, client: redis.Redis, *, namespace: str, limits: RateLimits, burst: float = 1.0,
                 urgent_share: float = 0.2, urgent_active_s: float = 5.0, cache_s: float = 1.0) -> None:
        if not 0 <= urgent_share < 1 or burst < 1:
            raise ValueError("urgent_share must be in [0, 1) and burst at least 1")
        self.client, self.namespace, self.limits = client, namespace, limits
        self.burst, self.urgent_share, self.urgent_active_s = burst, urgent_share, urgent_active_s
        self.overrides = Overrides(client, f"{namespace}:rl:overrides", cache_s)
        self._reserve = client.register_script(RESERVE)
        self._push_back = client.register_script(PUSH_BACK)
        self._block = client.register_script(BLOCK)

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Any) -> Limiter:
        return cls(client, namespace=settings.namespace, limits=RateLimits.from_settings(settings),
                   burst=settings.limiter_burst, urgent_share=settings.urgent_share,
                   urgent_active_s=settings.urgent_active_s)

    # -- keys and rates ------------------------------------------------------------------------------------

    def sender_key(self, sender_type: str, sender: str, suffix: str = "tat") -> str:
        return f"{self.namespace}:rl:{{{sender_type}:{sender}}}:{suffix}"

    def account_key(self, stream: str) -> str:
        return f"{self.namespace}:rl:{{account:{stream}}}:slots"

    def rates(self, keys: LimitKeys) -> tuple[Rate, Rate]:
        """The sender's and the account's rate for ``keys`` (overrides from the per-process cache)."""
        sender = self.limits.sender_rate(keys.sender_type, keys.sender, self.overrides.get())
        return sender, self.limits.account_rate(keys.account)

    # -- the hot path --------------------------------------------------------------------------------------

    def reserve(self, keys: LimitKeys, *, cost: int = 1, urgent: bool = False,
                max_wait_s: float = 1.0, holds: Sequence[str] = ()) -> Reservation:
        """Reserve ``cost`` slots on the sender and the account key, or nothing if the wait exceeds ``max_wait_s``
        or one of the ``holds`` keys (:meth:`worker.holds.SenderHolds.keys`) is in force (``sender_held``).

        One EVALSHA (plus, at most once a second per process, one HGETALL of the overrides).
        """
        if cost < 1:
            raise ValueError(f"cost must be at least 1 slot (got {cost})")
        sender, account = self.rates(keys)
        t_sender = interval_us(sender.mps)
        t_bulk = interval_us(sender.mps * (1 - self.urgent_share)) if self.urgent_share > 0 else 0
        redis_keys = [*(self.sender_key(keys.sender_type, keys.sender, suffix) for suffix in ("tat", "bulk", "urgent")),
                      self.account_key(keys.account), self.sender_key(keys.sender_type, keys.sender, "tickets"),
                      *holds]
        args: list[int | str] = [t_sender, interval_us(account.mps), t_bulk, repr(float(self.burst)), int(cost),
                math.floor(max_wait_s * US), int(urgent), math.ceil(self.urgent_active_s * 1000)]
        granted, wait_us, by, now_us = self._reserve(keys=redis_keys, args=args)
        return Reservation(bool(granted), wait_us / US, _LIMITED_BY[int(by)], int(now_us) + int(wait_us))

    def push_back(self, keys: LimitKeys, seconds: float, *, account: bool = False) -> float:
        """After a Telnyx 429 / 40318: no message from this sender (and the account stream, with ``account``)
        before now + ``seconds`` on the Redis clock, for every worker. Returns the sender's new wait in seconds.
        """
        delay = str(max(0, math.ceil(seconds * US)))
        if account:
            self._block(keys=[self.account_key(keys.account)], args=[delay])
        return int(self._push_back(keys=[self.sender_key(keys.sender_type, keys.sender)], args=[delay])) / US

    # -- inspection (CLI) ----------------------------------------------------------------------------------

    def status(self, name: str) -> dict[str, Any]:
        """What ``sendq limits show SENDER`` prints: the effective rate, its source, and the current backlog.

        ``name`` is a sender (its backlog is the TAT's lead over now) or a sender type (no backlog).
        """
        sender_type, sender = classify(name)
        overrides = self.overrides.fresh()
        rate = self.limits.sender_rate(sender_type, sender, overrides)
        shown: dict[str, Any] = {"sender": name, "type": sender_type, "mps": rate.mps, "source": rate.source,
                                 "matched": rate.matched, "override": overrides.get(name),
                                 "config": self.limits.config.get(name), "interval_s": 1 / rate.mps}
        if sender is not None:
            shown.update(self._backlog(sender_type, sender))
        return shown

    def _backlog(self, sender_type: str, sender: str) -> dict[str, Any]:
        pipe = self.client.pipeline(transaction=True)
        pipe.time()
        for suffix in ("tat", "bulk"):
            pipe.get(self.sender_key(sender_type, sender, suffix))
        pipe.exists(self.sender_key(sender_type, sender, "urgent"))
        (seconds, micros), tat, bulk, urgent = pipe.execute()
        now = seconds * US + micros

        def lead(value: Any) -> float:
            return max(0.0, (int(value) - now) / US) if value is not None else 0.0

        return {"backlog_s": lead(tat), "bulk_backlog_s": lead(bulk), "urgent_active": bool(urgent)}
