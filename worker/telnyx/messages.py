"""Message operations: sending a prepared body, retrieval and cancellation of Telnyx-scheduled messages.

A send's body is encoded once, by :func:`producers.validation.validate`, and stored with the message; every
attempt posts that stored body with the same Idempotency-Key, so a repeat is the same request, never a
re-encoding of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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


class Messages:
    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def send(self, endpoint: str, payload: Mapping[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
        """POST a prepared body to a send ``endpoint``; returns the message (``data``)."""
        return self._t.data_object("POST", endpoint, json=dict(payload), idempotency_key=idempotency_key)

    def retrieve(self, message_id: str) -> dict[str, Any]:
        """``GET /messages/{id}``; Telnyx keeps messages for 10 days."""
        return self._t.data_object("GET", f"/messages/{message_id}")

    def cancel_scheduled(self, message_id: str) -> dict[str, Any]:
        """``DELETE /messages/{id}``: only while ``scheduled`` and more than a minute before ``send_at``.

        The spec answers with the message at the top level, some docs wrap it in ``data``: both are accepted.
        """
        return self._t.data_object("DELETE", f"/messages/{message_id}")

    def retrieve_group(self, message_id: str) -> list[dict[str, Any]]:
        """``GET /messages/group/{message_id}``: one payload per recipient of a group MMS."""
        return list(self._t.data("GET", f"/messages/group/{message_id}") or [])
