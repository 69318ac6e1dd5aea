"""Telling that Redis lost its data (restarted without persistence, flushed, failed over to an empty replica).

The jobs in Redis are lost with it: the queued messages' jobs, the apply_events jobs of webhooks already answered
2xx, bulk-update pollers and campaign expanders. The store still has every row, and the scheduler's look for lost
jobs would find them, but only ``requeue_after_s`` (5 minutes) later, and a message whose events were lost only
when the reconciler asks Telnyx (``finalize_after_s``, 15 minutes).

So ``sendq scheduler`` keeps a marker key in Redis, ``{namespace}:redis-epoch``, holding a random token that the
store remembers too (``sync_state``). Each tick reads the key (one GET): when it is gone, or holds another token
than the one remembered, Redis lost its data since the last look, and the scheduler hands every queued message
to a new job and asks Telnyx at once about the messages whose events may have been lost.
"""

from __future__ import annotations

import logging
import uuid
from typing import cast

import redis
import sqlalchemy as sa

from worker.store import Store, insert_new, sync_state, utcnow

log = logging.getLogger(__name__)

#: The ``sync_state`` row remembering the token.
EPOCH = "redis.epoch"


class RedisEpoch:
    """The marker key of one namespace; :meth:`lost` tells whether Redis lost its data since the last call."""

    def __init__(self, client: redis.Redis, store: Store, namespace: str) -> None:
        self.client = client
        self.store = store
        self.key = f"{namespace}:redis-epoch"
        self._known: str | None = None
        self._loaded = False

    def _get(self) -> bytes | None:
        # A bytes client (no decode_responses): redis-py types its answers for either kind of client.
        return cast("bytes | None", self.client.get(self.key))

    def lost(self) -> bool:
        """Whether the key is gone or changed since the last look (False the very first time, when no token was
        ever remembered: nothing tells what Redis held before). Redis and store errors propagate."""
        if not self._loaded:
            self._known = self._remembered()
            self._loaded = True
        found = self._get()
        current = found.decode() if found is not None else None
        if current is not None and current == self._known:
            return False
        if current is None:
            token = uuid.uuid4().hex
            # NX: two schedulers that both found the key gone agree on one token.
            if not self.client.set(self.key, token, nx=True):
                found = self._get()
                token = found.decode() if found is not None else token
            current = token
        was, self._known = self._known, current
        self._remember(current)
        return was is not None

    def _remembered(self) -> str | None:
        with self.store.reader.connect() as conn:
            return conn.execute(sa.select(sync_state.c.value).where(sync_state.c.name == EPOCH)).scalar()

    def _remember(self, token: str) -> None:
        with self.store.engine.begin() as conn:
            if not insert_new(conn, sync_state, {"name": EPOCH, "value": token, "updated_at": utcnow()}):
                conn.execute(sync_state.update().where(sync_state.c.name == EPOCH)
                             .values(value=token, updated_at=utcnow()))
