"""Hooks for applications: inbound messages and final statuses handed to the application's own dramatiq actor.

``SENDQ_INBOUND_ACTOR`` and ``SENDQ_STATUS_ACTOR`` name an actor as ``actor_name`` or ``queue_name:actor_name``
(queue ``hooks`` when none is given). sendq imports no application code: it builds a ``dramatiq.Message`` for
that name and enqueues it on its own broker (same Redis, namespace ``SENDQ_NAMESPACE``), where the
application's worker, declaring an actor of that name on that queue, picks it up. The queue may not be one of
sendq's own, whose workers would take the message and find no such actor.

- inbound: one job per inbound message, the first time its Telnyx id is seen, with the record of
  :meth:`worker.inbound.Inbound.record_message` (``id``, ``from``, ``to``, ``text``, ``keyword``, ...);
- status: one job per message when it reaches a final status, from the change that made the move (a webhook,
  the send path or the reconciler; not ``cancelled``, which only the application's own cancel causes), with
  the message's record as ``sendq status --json`` shows it.

A hook is sent after the outcome is stored; if Redis refuses it at that moment it is logged and counted
(``sendq_hooks_total{result="failed"}``), never undoing the outcome: the store still answers ``sendq status``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import dramatiq
import redis
from dramatiq.errors import DramatiqError

from worker import metrics, statuses
from worker.queues import Target

if TYPE_CHECKING:
    from worker.settings import Settings
    from worker.store import Store

log = logging.getLogger(__name__)

INBOUND, STATUS = "inbound", "status"


class Hooks:
    """Enqueues the configured hook jobs; without a broker or targets every call does nothing."""

    def __init__(self, broker: dramatiq.Broker | None = None, *, inbound: Target | None = None,
                 status: Target | None = None) -> None:
        self.broker = broker
        self.inbound = inbound if broker is not None else None
        self.status = status if broker is not None else None

    @classmethod
    def disabled(cls) -> Hooks:
        return cls()

    @classmethod
    def from_settings(cls, settings: Settings, broker: dramatiq.Broker | None) -> Hooks:
        return cls(broker, inbound=Target.parse(settings.inbound_actor, "SENDQ_INBOUND_ACTOR"),
                   status=Target.parse(settings.status_actor, "SENDQ_STATUS_ACTOR"))

    def inbound_message(self, record: dict[str, Any]) -> bool:
        """Hand an inbound message's record to the inbound actor; whether a job was enqueued."""
        return self._send(INBOUND, self.inbound, record)

    def final_status(self, store: Store, message_id: str, status: str) -> bool:
        """Hand the record of a message that just reached final ``status`` to the status actor.

        Call it only from the change that made the move, so each message is handed over once.
        """
        if self.status is None or not statuses.is_final(status):
            return False
        return self._send(STATUS, self.status, store.record(message_id))

    def campaign_finished(self, record: dict[str, Any]) -> bool:
        """Hand a campaign's final progress record (``record_type`` ``campaign``: completed or cancelled) to
        the status actor, once, from the change that finished it."""
        return self._send(STATUS, self.status, {"record_type": "campaign", **record})

    def _send(self, hook: str, target: Target | None, payload: dict[str, Any]) -> bool:
        if target is None or self.broker is None:
            return False
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=target.queue_name, actor_name=target.actor_name, args=(payload,), kwargs={}, options={})
        try:
            self.broker.enqueue(message)
        except (redis.RedisError, DramatiqError, TypeError, ValueError):
            metrics.HOOKS.labels(hook, "failed").inc()
            log.exception("%s hook for %s not enqueued to %s", hook, payload.get("id"), target.actor_name)
            return False
        metrics.HOOKS.labels(hook, "enqueued").inc()
        return True
