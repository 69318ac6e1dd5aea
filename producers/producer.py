"""The enqueue side of sendq: validate, store, then enqueue after the commit."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import dramatiq

from producers.validation import SendRequest, validate
from worker.actors import Actors
from worker.broker import build_broker
from worker.embedded import EmbeddedRedis, resolve_redis
from worker.errors import ValidationError
from worker.settings import Settings
from worker.store import Store

log = logging.getLogger(__name__)


class Producer:
    """Accepts messages into sendq. Build one with :meth:`connect` and reuse it; it is thread-safe."""

    def __init__(self, settings: Settings, store: Store, actors: Actors,
                 embedded: EmbeddedRedis | None = None) -> None:
        self.settings = settings
        self.store = store
        self.actors = actors
        self._embedded = embedded

    @classmethod
    def connect(cls, settings: Settings | None = None, *, broker: dramatiq.Broker | None = None) -> Producer:
        """A producer for ``settings`` (default: from the environment), joining the embedded Redis if needed."""
        settings, embedded = resolve_redis(settings or Settings.from_env())
        broker = broker or build_broker(settings)
        return cls(settings, Store.from_url(settings.database_url), Actors(broker), embedded)

    def close(self) -> None:
        self.actors.broker.close()
        self.store.close()
        if self._embedded is not None:
            self._embedded.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(
        self,
        to: str | Sequence[str],
        *,
        text: str | None = None,
        media_urls: Sequence[str] = (),
        from_: str | None = None,
        profile: str | None = None,
        kind: str = "auto",
        priority: str = "normal",
        idempotency_key: str | None = None,
        whatsapp_message: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Accept one message; returns ``{"id", "status", "created"}``.

        A repeated idempotency key returns the message first accepted with it (``created`` False) and
        sends nothing new; reusing a key for a different message raises :class:`ValidationError`.
        """
        request = SendRequest(to=to, text=text, media_urls=media_urls, from_=from_, profile=profile, kind=kind,
                              priority=priority, idempotency_key=idempotency_key, whatsapp_message=whatsapp_message)
        new = validate(request, webhook_url=self.settings.webhook_url)
        row, created = self.store.insert(new)
        if not created:
            if not new.same_request(row):
                raise ValidationError("idempotency_key", f"already used for a different message ({row['id']})")
            return {"id": row["id"], "status": row["status"], "created": False}
        try:
            self.actors.enqueue_send(new.id, new.priority)
        except Exception:
            # The row is the record of the message: the scheduler re-enqueues queued rows that have no job.
            log.exception("message %s stored but not enqueued; the scheduler will enqueue it", new.id)
        return {"id": new.id, "status": row["status"], "created": True}

    def send(self, to: str | Sequence[str], **options: Any) -> str:
        """Accept one message and return its id (see :meth:`submit` for the options)."""
        return str(self.submit(to, **options)["id"])

    def status(self, message_id: str) -> dict[str, Any]:
        """The message's record (CONTRACT.md). Raises NotFoundError for an unknown id."""
        return self.store.record(message_id)
