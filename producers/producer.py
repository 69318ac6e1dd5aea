"""The enqueue side of sendq: validate, store, then enqueue after the commit."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import dramatiq

from producers.validation import SendRequest, validate
from worker import statuses
from worker.actors import Actors
from worker.broker import build_broker
from worker.bulk_updates import BulkUpdates, check_request
from worker.embedded import EmbeddedRedis, resolve_redis
from worker.errors import ConflictError, TelnyxRefused, ValidationError
from worker.settings import Settings
from worker.store import Store, utcnow
from worker.telnyx import TelnyxClient

log = logging.getLogger(__name__)

#: Statuses a message can be cancelled from in sendq's own hands.
CANCELLABLE = (statuses.QUEUED, statuses.SCHEDULED)
TELNYX_CANCEL_CUTOFF = timedelta(minutes=1)


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
        send_at: datetime | str | None = None,
        valid_for: int | None = None,
        schedule_mode: str = "local",
    ) -> dict[str, Any]:
        """Accept one message; returns ``{"id", "status", "created"}``.

        A repeated idempotency key returns the message first accepted with it (``created`` False) and
        sends nothing new; reusing a key for a different message raises :class:`ValidationError`.
        """
        request = SendRequest(to=to, text=text, media_urls=media_urls, from_=from_, profile=profile, kind=kind,
                              priority=priority, idempotency_key=idempotency_key, whatsapp_message=whatsapp_message,
                              send_at=send_at, valid_for=valid_for, schedule_mode=schedule_mode)
        new = validate(request, webhook_url=self.settings.webhook_url,
                       urgent_valid_for_s=self.settings.urgent_valid_for_s)
        row, created = self.store.insert(new)
        if not created:
            if not new.same_request(row):
                raise ValidationError("idempotency_key", f"already used for a different message ({row['id']})")
            return {"id": row["id"], "status": row["status"], "created": False}
        if new.status == statuses.SCHEDULED:
            return {"id": new.id, "status": new.status, "created": True}  # the scheduler enqueues it when due
        try:
            self.actors.enqueue_send(new.id, new.priority, generation=row["job_gen"])
        except Exception:
            # The row is the record of the message: the scheduler re-enqueues queued rows that have no job.
            log.exception("message %s stored but not enqueued; the scheduler will enqueue it", new.id)
        return {"id": new.id, "status": row["status"], "created": True}

    def send(self, to: str | Sequence[str], **options: Any) -> str:
        """Accept one message and return its id (see :meth:`submit` for the options)."""
        return str(self.submit(to, **options)["id"])

    def cancel(self, message_id: str) -> dict[str, Any]:
        """Cancel a message not yet handed to Telnyx (or scheduled at Telnyx); returns its record.

        One conditional UPDATE decides between this and a worker claiming the message, so exactly one wins and
        nothing is sent after ``cancelled``. Cancelling twice is harmless. Raises :class:`ConflictError` with
        the reason once the message is ``sending`` or later.
        """
        row = self.store.row(message_id)
        if row["telnyx_id"] and row["status"] == statuses.SCHEDULED:
            self._cancel_at_telnyx(row)
        elif not self.store.transition(message_id, statuses.CANCELLED, from_=CANCELLABLE):
            current = self.store.row(message_id)["status"]
            if current != statuses.CANCELLED:
                raise ConflictError(f"message {message_id} is already {current}: too late to cancel", status=current)
        return self.store.record(message_id)

    def _cancel_at_telnyx(self, row: dict[str, Any]) -> None:
        # Telnyx cancels only more than a minute before send_at; say so rather than let it answer 403.
        if row["send_at"] - utcnow() <= TELNYX_CANCEL_CUTOFF:
            raise ConflictError(f"message {row['id']} is due at Telnyx within a minute: too late to cancel",
                                status=row["status"])
        with TelnyxClient.from_settings(self.settings) as telnyx:
            try:
                telnyx.messages.cancel_scheduled(row["telnyx_id"])
            except TelnyxRefused as exc:
                raise ConflictError(f"Telnyx refused to cancel message {row['id']}: {exc}", status=row["status"]) \
                    from exc
        self.store.transition(row["id"], statuses.CANCELLED, from_=[statuses.SCHEDULED])

    def status(self, message_id: str) -> dict[str, Any]:
        """The message's record (CONTRACT.md). Raises NotFoundError for an unknown id."""
        return self.store.record(message_id)

    def bulk_update(self, profile_id: str, numbers: Sequence[str], *, assign_only: bool = False) -> dict[str, Any]:
        """Move ``numbers`` (E.164) to profile ``profile_id`` (``""`` unassigns); returns ``{"id", "status"}``.

        Validated before anything is stored; the worker posts the numbers to Telnyx in chunks and polls until
        every number has moved or failed (:meth:`bulk_status` shows which).
        """
        profile_id, numbers, assign_only = check_request(profile_id, numbers, assign_only)
        row = BulkUpdates(self.store.engine).insert(profile_id, numbers, assign_only)
        try:
            self.actors.enqueue_bulk_update(row["id"])
        except Exception:
            log.exception("bulk update %s stored but not enqueued; the scheduler will enqueue it", row["id"])
        return {"id": row["id"], "status": row["status"]}

    def bulk_status(self, bulk_id: str) -> dict[str, Any]:
        """The bulk update's record (CONTRACT.md). Raises NotFoundError for an unknown id."""
        return BulkUpdates(self.store.engine).record(bulk_id)
