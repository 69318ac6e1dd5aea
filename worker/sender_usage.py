"""How much of their rate the senders of each type use: recorded by workers, read by ``GET /metrics``.

Utilisation of a sender type is the rate time its senders' granted reservations took, over the time those
senders had: ``sum(cost / sender's rate) / (window x active senders)`` over the last :data:`WINDOW_S`. A
worker process cannot compute it alone (one sender's messages are spread over every process, and a gauge per
process cannot be added up or maxed into the right answer), so each process adds its share to Redis: at most
once a second, one pipelined call, never one per send. The keys hold per-second sums and a sorted set of the
senders seen (kept in Redis, never in a metric label) and expire by themselves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import redis

from worker.limits import SENDER_TYPES, LimitKeys

log = logging.getLogger(__name__)

#: The utilisation window, in seconds.
WINDOW_S = 10
FLUSH_S = 1.0


def used_key(namespace: str, sender_type: str, second: int) -> str:
    return f"{namespace}:usage:{sender_type}:{second}"


def senders_key(namespace: str, sender_type: str) -> str:
    return f"{namespace}:usage:{sender_type}:senders"


class UsageRecorder:
    """Adds granted reservations up in this process and hands the sums to Redis at most once a second.

    ``rate_of`` answers a sender's messages per second for its limiter keys (the limiter's own answer, so
    overrides count). Errors writing to Redis are logged and the sums dropped: metrics never fail a send.
    """

    def __init__(self, client: redis.Redis, namespace: str, rate_of: Callable[[LimitKeys], float], *,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.namespace = namespace
        self.rate_of = rate_of
        self.clock = clock
        self._lock = threading.Lock()
        self._used: dict[str, float] = defaultdict(float)
        self._senders: dict[str, set[str]] = defaultdict(set)
        self._flushed_at = clock()

    def record(self, keys: LimitKeys, cost: int) -> None:
        """Count ``cost`` slots granted to ``keys``' sender; flushes when a second has passed."""
        seconds = cost / self.rate_of(keys)
        with self._lock:
            self._used[keys.sender_type] += seconds
            self._senders[keys.sender_type].add(keys.sender)
            due = self.clock() - self._flushed_at >= FLUSH_S
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            used, senders = self._used, self._senders
            self._used, self._senders = defaultdict(float), defaultdict(set)
            now = self._flushed_at = self.clock()
        if not used:
            return
        pipe = self.client.pipeline(transaction=False)
        for sender_type, seconds in used.items():
            bucket = used_key(self.namespace, sender_type, int(now))
            pipe.incrbyfloat(bucket, seconds)
            pipe.expire(bucket, 2 * WINDOW_S)
            members = senders_key(self.namespace, sender_type)
            pipe.zadd(members, dict.fromkeys(senders[sender_type], now))
            pipe.zremrangebyscore(members, "-inf", now - WINDOW_S)
            pipe.expire(members, 2 * WINDOW_S)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            log.debug("could not record sender usage: %s", exc)


def queue_utilisation(pipe: redis.client.Pipeline, namespace: str,
                      now: float) -> Callable[[list[Any]], dict[str, float]]:
    """Queue the reads of every sender type's utilisation on ``pipe``; returns how to read the answers.

    The returned function takes the answers of exactly these commands (in order) and gives ``{type: ratio}``.
    """
    seconds = [int(now) - i for i in range(WINDOW_S)]
    for sender_type in SENDER_TYPES:
        pipe.mget([used_key(namespace, sender_type, s) for s in seconds])
        pipe.zcount(senders_key(namespace, sender_type), now - WINDOW_S, "+inf")

    def read(answers: list[Any]) -> dict[str, float]:
        found: dict[str, float] = {}
        for i, sender_type in enumerate(SENDER_TYPES):
            buckets, active = answers[2 * i], answers[2 * i + 1]
            used = sum(float(v) for v in buckets if v is not None)
            found[sender_type] = used / (WINDOW_S * active) if active else 0.0
        return found

    return read


#: Commands :func:`queue_utilisation` adds to a pipeline.
UTILISATION_COMMANDS = 2 * len(SENDER_TYPES)
