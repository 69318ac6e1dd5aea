"""Message operations: every send endpoint, Telnyx-side scheduling, retrieval and cancellation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict, Unpack

from worker.telnyx.transport import Transport

#: The send endpoint for each concrete message kind (``auto`` resolves to one of these first).
ENDPOINTS = {
    "message": "/messages",
    "long_code": "/messages/long_code",
    "short_code": "/messages/short_code",
    "number_pool": "/messages/number_pool",
    "alphanumeric": "/messages/alphanumeric_sender_id",
    "group_mms": "/messages/group_mms",
    "whatsapp": "/messages/whatsapp",
    "schedule": "/messages/schedule",
}


class Webhooks(TypedDict, total=False):
    webhook_url: str
    webhook_failover_url: str
    use_profile_webhooks: bool


class Content(Webhooks, total=False):
    text: str
    media_urls: list[str]
    subject: str
    type: str  # "SMS" | "MMS"
    auto_detect: bool
    encoding: str  # "auto" | "gsm7" | "ucs2"


def body(**fields: Any) -> dict[str, Any]:
    """A request body: ``from_`` becomes ``from``, absent (None) fields are left out."""
    return {("from" if k == "from_" else k): v for k, v in fields.items() if v is not None}


class Messages:
    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def send(self, endpoint: str, payload: Mapping[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
        """POST a prepared body to a send ``endpoint``; returns the message (``data``)."""
        return self._t.data("POST", endpoint, json=dict(payload), idempotency_key=idempotency_key)

    def send_message(self, *, to: str, from_: str | None = None, messaging_profile_id: str | None = None,
                     send_at: str | None = None, idempotency_key: str | None = None,
                     **content: Unpack[Content]) -> dict[str, Any]:
        """``POST /messages``: phone number, alphanumeric ID, short code or number pool, chosen by fields."""
        return self.send(ENDPOINTS["message"], body(to=to, from_=from_, messaging_profile_id=messaging_profile_id,
                                                    send_at=send_at, **content), idempotency_key=idempotency_key)

    def send_long_code(self, *, from_: str, to: str, idempotency_key: str | None = None,
                       **content: Unpack[Content]) -> dict[str, Any]:
        return self.send(ENDPOINTS["long_code"], body(from_=from_, to=to, **content), idempotency_key=idempotency_key)

    def send_short_code(self, *, from_: str, to: str, idempotency_key: str | None = None,
                        **content: Unpack[Content]) -> dict[str, Any]:
        return self.send(ENDPOINTS["short_code"], body(from_=from_, to=to, **content),
                         idempotency_key=idempotency_key)

    def send_number_pool(self, *, messaging_profile_id: str, to: str, idempotency_key: str | None = None,
                         **content: Unpack[Content]) -> dict[str, Any]:
        """The pool picks the sender; it comes back in ``data.from``."""
        return self.send(ENDPOINTS["number_pool"], body(messaging_profile_id=messaging_profile_id, to=to, **content),
                         idempotency_key=idempotency_key)

    def send_alphanumeric(self, *, from_: str, messaging_profile_id: str, to: str, text: str,
                          idempotency_key: str | None = None, **hooks: Unpack[Webhooks]) -> dict[str, Any]:
        """SMS only, one-way, from a 1-11 character sender ID registered on the profile."""
        return self.send(ENDPOINTS["alphanumeric"], body(from_=from_, messaging_profile_id=messaging_profile_id,
                                                         to=to, text=text, **hooks), idempotency_key=idempotency_key)

    def send_group_mms(self, *, from_: str, to: list[str], text: str | None = None,
                       media_urls: list[str] | None = None, subject: str | None = None,
                       idempotency_key: str | None = None, **hooks: Unpack[Webhooks]) -> dict[str, Any]:
        """One MMS to at most 8 recipients; each gets its own ``message.finalized``."""
        return self.send(ENDPOINTS["group_mms"], body(from_=from_, to=to, text=text, media_urls=media_urls,
                                                      subject=subject, **hooks), idempotency_key=idempotency_key)

    def send_whatsapp(self, *, from_: str, to: str, whatsapp_message: Mapping[str, Any],
                      messaging_profile_id: str | None = None, webhook_url: str | None = None,
                      idempotency_key: str | None = None) -> dict[str, Any]:
        return self.send(ENDPOINTS["whatsapp"], body(from_=from_, to=to, whatsapp_message=dict(whatsapp_message),
                                                     messaging_profile_id=messaging_profile_id, type="WHATSAPP",
                                                     webhook_url=webhook_url), idempotency_key=idempotency_key)

    def schedule(self, *, to: str, send_at: str, from_: str | None = None, messaging_profile_id: str | None = None,
                 idempotency_key: str | None = None, **content: Unpack[Content]) -> dict[str, Any]:
        """Telnyx-side scheduling: ``send_at`` 5 minutes to 5 days ahead (no ``encoding`` here)."""
        content.pop("encoding", None)
        return self.send(ENDPOINTS["schedule"], body(to=to, send_at=send_at, from_=from_,
                                                     messaging_profile_id=messaging_profile_id, **content),
                         idempotency_key=idempotency_key)

    def retrieve(self, message_id: str) -> dict[str, Any]:
        """``GET /messages/{id}``; Telnyx keeps messages for 10 days."""
        return self._t.data("GET", f"/messages/{message_id}")

    def cancel_scheduled(self, message_id: str) -> dict[str, Any]:
        """``DELETE /messages/{id}``: only while ``scheduled`` and more than a minute before ``send_at``.

        The spec answers with the message at the top level, some docs wrap it in ``data``: both are accepted.
        """
        return self._t.data("DELETE", f"/messages/{message_id}")

    def retrieve_group(self, message_id: str) -> list[dict[str, Any]]:
        """``GET /messages/group/{message_id}``: one payload per recipient of a group MMS."""
        return list(self._t.data("GET", f"/messages/group/{message_id}") or [])
