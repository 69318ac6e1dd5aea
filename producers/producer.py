"""The enqueue side of sendq: validate, store, then enqueue after the commit."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from dramatiq.brokers.redis import RedisBroker

from producers.campaign import CampaignOptions, ingest, numbered
from producers.validation import SendRequest, validate
from worker import statuses
from worker.actors import Actors
from worker.broker import build_broker
from worker.bulk_updates import BulkUpdates, check_request
from worker.campaigns import control
from worker.campaigns.rows import RowError
from worker.campaigns.store import RUNNING, Campaigns
from worker.dependencies import raising_outages, unavailable
from worker.embedded import EmbeddedRedis, resolve_redis
from worker.errors import ConflictError, DependencyUnavailable, TelnyxRefused, ValidationError
from worker.hooks import Hooks
from worker.limiter import Limiter
from worker.settings import Settings
from worker.store import NewMessage, Store, utcnow
from worker.telnyx import TelnyxClient

log = logging.getLogger(__name__)

#: Statuses a message can be cancelled from in sendq's own hands.
CANCELLABLE = (statuses.QUEUED, statuses.SCHEDULED)
TELNYX_CANCEL_CUTOFF = timedelta(minutes=1)


def check_send(settings: Settings | None, to: str | Sequence[str], **options: Any) -> NewMessage:
    """The message :meth:`Producer.submit` would store for these arguments, or a ValidationError naming the field.

    It needs no connection, so callers check before connecting: refused input starts no embedded Redis and
    creates no SQLite file.
    """
    return validate(SendRequest(to=to, **options), webhook_url=settings.webhook_url if settings else None,
                    urgent_valid_for_s=settings.urgent_valid_for_s if settings else None)


class Producer:
    """Accepts messages into sendq. Build one with :meth:`connect` and reuse it; it is thread-safe.

    While the store or Redis cannot be reached its methods raise :class:`~worker.errors.StoreUnavailable` or
    :class:`~worker.errors.RedisUnavailable` (both :class:`~worker.errors.DependencyUnavailable`), never a
    driver's exception. :meth:`submit` is the exception for Redis: a stored message whose job could not be
    enqueued is accepted, and the scheduler enqueues it.
    """

    def __init__(self, settings: Settings, store: Store, actors: Actors,
                 embedded: EmbeddedRedis | None = None) -> None:
        self.settings = settings
        self.store = store
        self.actors = actors
        self._embedded = embedded

    @classmethod
    @raising_outages
    def connect(cls, settings: Settings | None = None, *, broker: RedisBroker | None = None) -> Producer:
        """A producer for ``settings`` (default: from the environment), joining the embedded Redis if needed."""
        settings, embedded = resolve_redis(settings or Settings.from_env())
        broker = broker or build_broker(settings)
        return cls(settings, Store.from_url(settings.database_url).migrate(), Actors(broker), embedded)

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
        new = check_send(self.settings, to, text=text, media_urls=media_urls, from_=from_, profile=profile, kind=kind,
                         priority=priority, idempotency_key=idempotency_key, whatsapp_message=whatsapp_message,
                         send_at=send_at, valid_for=valid_for, schedule_mode=schedule_mode)
        row, created = self.store.insert(new)
        if not created:
            if not new.same_request(row):
                raise ValidationError("idempotency_key", f"already used for a different message ({row['id']})")
            return {"id": row["id"], "status": row["status"], "created": False}
        if new.status == statuses.SCHEDULED:
            return {"id": new.id, "status": new.status, "created": True}  # the scheduler enqueues it when due
        try:
            self.actors.enqueue_owned(self.store, [(new.id, new.priority, row["job_gen"], None)])
        except DependencyUnavailable as exc:
            # The row is the record of the message, marked as waiting for its job: the scheduler enqueues it at
            # its first tick after Redis answers. One line, ids only: the message's text and numbers stay out.
            log.warning("message %s stored, not enqueued (%s unavailable); the scheduler enqueues it once it "
                        "answers", new.id, exc.dependency)
        except Exception as exc:
            log.error("message %s stored, not enqueued (%s); the scheduler enqueues it", new.id,
                      type(exc).__name__)
        return {"id": new.id, "status": row["status"], "created": True}

    def send(self, to: str | Sequence[str], **options: Any) -> str:
        """Accept one message and return its id (see :meth:`submit` for the options)."""
        return str(self.submit(to, **options)["id"])

    @raising_outages
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

    @raising_outages
    def status(self, message_id: str) -> dict[str, Any]:
        """The message's record (CONTRACT.md). Raises NotFoundError for an unknown id."""
        return self.store.record(message_id)

    @raising_outages
    def bulk_update(self, profile_id: str, numbers: Sequence[str], *, assign_only: bool = False) -> dict[str, Any]:
        """Move ``numbers`` (E.164) to profile ``profile_id`` (``""`` unassigns); returns ``{"id", "status"}``.

        Validated before anything is stored; the worker posts the numbers to Telnyx in chunks and polls until
        every number has moved or failed (:meth:`bulk_status` shows which).
        """
        profile_id, numbers, assign_only = check_request(profile_id, numbers, assign_only)
        row = BulkUpdates(self.store.engine).insert(profile_id, numbers, assign_only)
        try:
            self.actors.enqueue_bulk_update(row["id"])
        except Exception as exc:
            outage = unavailable(exc)
            log.warning("bulk update %s stored, not enqueued (%s); the scheduler enqueues it", row["id"],
                        f"{outage.dependency} unavailable" if outage else type(exc).__name__)
        return {"id": row["id"], "status": row["status"]}

    @raising_outages
    def bulk_status(self, bulk_id: str) -> dict[str, Any]:
        """The bulk update's record (CONTRACT.md). Raises NotFoundError for an unknown id."""
        return BulkUpdates(self.store.engine).record(bulk_id)

    # -- campaigns ---------------------------------------------------------------------------------------

    @raising_outages
    def campaign(self, recipients: Iterable[Mapping[str, Any]], *, template: str, phone_column: str = "phone",
                 on_error: Callable[[RowError], None] | None = None, **options: Any) -> dict[str, Any]:
        """Create a campaign sending ``template`` to ``recipients`` (mappings with ``phone_column`` and the
        template's variables), streamed; returns its counts (see :meth:`create_campaign`).

        ``options``: ``from_`` (a sender or a list of senders, used in turn), ``profile``, ``media_urls``,
        ``send_at``, ``name``, ``valid_for`` (seconds each message stays sendable once created), ``rate_cap``
        (messages per second) and ``kind``.
        """
        senders = options.pop("from_", ())
        return self.create_campaign(CampaignOptions(template=template, senders=senders, **options),
                                    numbered(recipients), phone_column=phone_column, on_error=on_error)

    @raising_outages
    def create_campaign(self, options: CampaignOptions, rows: Iterable[tuple[int, Mapping[str, Any]]], *,
                        phone_column: str, on_error: Callable[[RowError], None] | None = None) -> dict[str, Any]:
        """Validate ``options``, store the campaign and stream ``rows`` (``(line, columns)``) into it.

        Returns ``{"id", "status", "rows_read", "rows_invalid", "duplicates", "recipients"}``; bad rows go to
        ``on_error`` and are skipped. Sending starts after the first batch is stored.
        """
        checked = options.check(self.settings.webhook_url)
        book = Campaigns(self.store.engine, self.store.reader)
        campaign = book.insert(**checked)

        def start() -> None:
            if campaign["status"] == RUNNING:
                self.actors.enqueue_expander(campaign["id"])

        result = ingest(book, campaign, rows, phone_column=phone_column, on_error=on_error or (lambda e: None),
                        start=start)
        return result.as_dict()

    @raising_outages
    def campaign_status(self, campaign_id: str) -> dict[str, Any]:
        """Progress of a campaign: messages by status, recent send rate and ETA at the current limits."""
        return control.record(self.store, campaign_id, self._limiter())

    @raising_outages
    def pause_campaign(self, campaign_id: str) -> dict[str, Any]:
        """Stop a campaign's sends; a message already handed to a worker's send finishes. Returns its status."""
        control.pause(self.store, campaign_id)
        return self.campaign_status(campaign_id)

    @raising_outages
    def resume_campaign(self, campaign_id: str) -> dict[str, Any]:
        """Continue a paused campaign where it stopped."""
        self.actors.enqueue_campaign_work(self.store, campaign_id, control.resume(self.store, campaign_id))
        return self.campaign_status(campaign_id)

    @raising_outages
    def cancel_campaign(self, campaign_id: str) -> dict[str, Any]:
        """Finalize a campaign: whatever is not yet handed to Telnyx ends ``cancelled``."""
        return control.cancel(self.store, campaign_id, self._limiter(),
                              Hooks.from_settings(self.settings, self.actors.broker))

    def _limiter(self) -> Limiter:
        return Limiter.from_settings(self.actors.broker.client, self.settings)
