"""dramatiq's dead-letter queues for sendq's queues: list, replay, purge.

A job whose retries are exhausted (or that raised an exception dramatiq never retries) is moved by the broker
to ``{namespace}:{queue}.XQ``, a ZSET of Redis message ids scored by the time it died, with its payload in the
``{namespace}:{queue}.XQ.msgs`` HASH; dramatiq drops entries older than 7 days.

**Replay** puts an entry's job back on its queue, with the same dramatiq message id and its retries reset,
then removes the entry; what a job does is decided by the store, so a replay never repeats an outcome:

- ``send_message``: only while the message is still ``queued`` (its job died before a claim, e.g. on a database
  error). The claim (``queued`` -> ``sending``) is conditional, so a replayed job finds nothing to do if the
  message went out meanwhile, and the send carries the same Idempotency-Key. A message in any other status is
  not replayed: a final status never changes (``failed`` after exhausted retries is final: send a new message
  to try again), ``scheduled`` belongs to the scheduler, and a stuck ``sending`` to the reconciler's lease.
- ``bulk_update``: only while the update is ``queued`` or ``submitted``; it resumes from its stored progress.
- ``apply_events`` (and ``apply_event`` of older sendqs): always; events are deduplicated by their id in the store.

Entries that are not replayed stay in the queue (``purge`` removes them, or dramatiq after 7 days).
"""

from __future__ import annotations

import builtins  # builtins.list in signatures below the class's own list() method, which shadows it there
import contextlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import q_name
from dramatiq.message import Message

from worker import statuses
from worker.bulk_updates import ACTIVE, BulkUpdates
from worker.errors import NotFoundError, StoreUnavailable
from worker.queues import QUEUES
from worker.store import Store, utcnow

SEND, BULK, EVENT, EVENTS = "send_message", "bulk_update", "apply_event", "apply_events"
#: Options a replayed job must not inherit from its dead copy: the broker sets its own on enqueue, and a replay
#: is an operator's decision to run the job now, so it starts with fresh retries and no age limit.
_RESET_OPTIONS = ("retries", "traceback", "requeue_timestamp", "eta", "redis_message_id", "max_age")
TRACEBACK_LINES = 3


@dataclass(frozen=True)
class DeadLetter:
    """One dead job. ``message_id`` is sendq's id (a message or bulk update), None for events; ``status`` its
    current status in the store (None when unknown); ``last_error`` the message's latest recorded error."""

    queue: str
    redis_id: str
    dramatiq_id: str
    actor: str
    message_id: str | None
    failed_at: datetime
    retries: int
    traceback: str | None
    status: str | None = None
    last_error: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failed_at": self.failed_at.isoformat()}


@dataclass(frozen=True)
class Replay:
    """What ``replay`` did with one entry: ``replayed``, or not and why (``reason``)."""

    id: str
    actor: str
    replayed: bool
    status: str | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class DeadLetters:
    """The dead-letter queues of ``broker``'s namespace, read and replayed against ``store``."""

    def __init__(self, broker: RedisBroker, store: Store, queues: Iterable[str] = QUEUES) -> None:
        self.broker = broker
        self.client: redis.Redis = broker.client
        self.store = store
        self.queues = tuple(queues)

    def _keys(self, queue: str) -> tuple[str, str]:
        dead = f"{self.broker.namespace}:{queue}.XQ"
        return dead, dead + ".msgs"

    def list(self) -> list[DeadLetter]:
        """Every dead job of sendq's queues, oldest first."""
        found = []
        for queue in self.queues:
            dead, payloads = self._keys(queue)
            # A bytes client (no decode_responses): redis-py types its answers for either kind of client.
            scored = cast("builtins.list[tuple[bytes, float]]", self.client.zrange(dead, 0, -1, withscores=True))
            if not scored:
                continue
            datas = cast("builtins.list[bytes | None]", self.client.hmget(payloads, [member for member, _ in scored]))
            found += [self._entry(queue, member.decode(), score, data)
                      for (member, score), data in zip(scored, datas, strict=True) if data is not None]
        return sorted(found, key=lambda e: e.failed_at)

    def replay(self, target: str | None = None) -> builtins.list[Replay]:
        """Replay the entries of ``target`` (sendq's id, or a dramatiq message id), or every entry with None.

        Raises NotFoundError when ``target`` names no dead job. An id with several dead jobs is replayed once.
        """
        entries = [e for e in self.list() if target is None or target in (e.message_id, e.dramatiq_id, e.redis_id)]
        if target is not None and not entries:
            raise NotFoundError(f"no dead job for {target!r}")
        results: dict[str, Replay] = {}
        for entry in entries:
            key = entry.message_id or entry.dramatiq_id
            done = results.get(key)
            if done is None:
                done = results[key] = self._replay_one(entry)
            if done.replayed:
                self._remove(entry)
        return list(results.values())

    def purge(self) -> int:
        """Drop every dead job of sendq's queues; returns how many there were."""
        pipe = self.client.pipeline(transaction=True)
        for queue in self.queues:
            dead, payloads = self._keys(queue)
            pipe.zcard(dead)
            pipe.delete(dead, payloads)
        return sum(pipe.execute()[::2])

    # -- internals ------------------------------------------------------------------------------------------

    def _entry(self, queue: str, redis_id: str, score: float, data: bytes) -> DeadLetter:
        message = Message.decode(data)
        options = message.options
        ours = str(message.args[0]) if message.actor_name in (SEND, BULK) and message.args else None
        status, last_error = self._state(message.actor_name, ours)
        return DeadLetter(
            queue=queue, redis_id=redis_id, dramatiq_id=message.message_id, actor=message.actor_name,
            message_id=ours, failed_at=datetime.fromtimestamp(score / 1000, UTC),
            retries=int(options.get("retries", 0)), traceback=_tail(options.get("traceback")),
            status=status, last_error=last_error,
        )

    def _state(self, actor: str, ours: str | None) -> tuple[str | None, dict[str, Any] | None]:
        try:
            if actor == SEND and ours:
                row = self.store.row(ours)
                return row["status"], (row["errors"] or [None])[-1]
            if actor == BULK and ours:
                row = BulkUpdates(self.store.engine).get(ours)
                return row["status"], (row["errors"] or [None])[-1]
        except NotFoundError:
            pass
        return None, None

    def _replay_one(self, entry: DeadLetter) -> Replay:
        key = entry.message_id or entry.dramatiq_id
        reason = self._not_replayable(entry)
        if reason:
            return Replay(key, entry.actor, False, entry.status, reason)
        # A bytes client (no decode_responses): redis-py types its answers for either kind of client.
        data = cast("bytes | None", self.client.hget(self._keys(entry.queue)[1], entry.redis_id))
        if data is None:  # replayed or purged by someone else meanwhile
            return Replay(key, entry.actor, False, entry.status, "no longer in the dead-letter queue")
        dead = Message.decode(data)
        args: tuple[Any, ...] = dead.args
        if dead.actor_name == SEND and entry.message_id:
            # The replayed job must own the message, or it would stop as superseded.
            generation = self.store.next_job(entry.message_id, after=None, due_at=utcnow())
            if generation is None:
                return Replay(key, entry.actor, False, entry.status, "no longer queued")
            args = (entry.message_id, generation)
        options = {k: v for k, v in dead.options.items() if k not in _RESET_OPTIONS}
        fresh: Message[Any] = Message(queue_name=q_name(dead.queue_name), actor_name=dead.actor_name, args=args,
                        kwargs=dead.kwargs, options=options, message_id=dead.message_id)
        try:
            self.broker.enqueue(fresh)
        except Exception:
            if dead.actor_name == SEND and entry.message_id:
                # Handed to the new job already: the scheduler enqueues it once Redis answers.
                with contextlib.suppress(StoreUnavailable):
                    self.store.enqueue_failed([(entry.message_id, args[1])])
            raise
        return Replay(key, entry.actor, True, entry.status, "re-enqueued")

    @staticmethod
    def _not_replayable(entry: DeadLetter) -> str | None:
        """Why ``entry`` must not be replayed, or None when it may."""
        if entry.actor in (EVENT, EVENTS):
            return None
        if entry.actor not in (SEND, BULK):
            return f"unknown actor {entry.actor!r}"
        if entry.status is None:
            return "not in the store"
        if entry.actor == BULK:
            return None if entry.status in ACTIVE else f"bulk update is {entry.status}, which is final"
        if entry.status == statuses.QUEUED:
            return None
        if statuses.is_final(entry.status):
            return f"message is {entry.status}, which is final: send a new message to try again"
        if entry.status == statuses.SENDING:
            return "message is sending: the scheduler's reconciler handles it once its lease ends"
        return f"message is {entry.status}: the scheduler or Telnyx has it"

    def _remove(self, entry: DeadLetter) -> None:
        dead, payloads = self._keys(entry.queue)
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(dead, entry.redis_id)
        pipe.hdel(payloads, entry.redis_id)
        pipe.execute()


def _tail(traceback: str | None) -> str | None:
    """The last lines of a traceback: the exception and where it was raised."""
    if not traceback:
        return None
    return "\n".join(traceback.strip().splitlines()[-TRACEBACK_LINES:])
