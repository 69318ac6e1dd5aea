"""The placeholders of the SDK's generated tests, replaced by what the simulated account really has.

Stainless generates each test from the OpenAPI spec's examples: ids that exist nowhere
(``182bd5e5-...``), ``"id"``, ``"order_id"``, a ``send_at`` in 2019, ``media_urls=["string"]``, ``to="+E.164"``,
senders the account does not own, pages numbered 0, and minimal sends with no sender or text (the spec marks only
``to`` required, though Telnyx's docs require a ``from`` and a ``text`` to send). Telnyx would refuse every one
of them, and so does the simulator. Rather than edit the generated files, a client of ours rewrites each
request's options just before it is sent (:meth:`Rewriter.options`, installed through the SDK's own
``_prepare_options`` hook): the request that reaches the simulator is the generated one with the placeholders
swapped for real values, so the SDK's method, serialisation, headers and response models are all exercised as
generated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from telnyx._models import FinalRequestOptions

#: Ids and numbers used as placeholders by the generated messaging tests.
PLACEHOLDER_ID = "182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e"
PLACEHOLDER_PROFILES = {"abc85f64-5717-4562-b3fc-2c9600000000", PLACEHOLDER_ID, "00000000-0000-0000-0000-000000000000",
                        "dd50eba1-a0c0-4563-9925-b25e842a7cb6", "messaging_profile_id"}
#: The phone-number endpoints and the kind of owned number each sends from.
SENDER_OF = {"/messages": "long_code", "/messages/schedule": "long_code", "/messages/long_code": "long_code",
             "/messages/group_mms": "long_code", "/messages/whatsapp": "long_code",
             "/messages/short_code": "short_code"}
TEXT = "Hello from the SDK's generated tests"
MEDIA = "https://example.com/media.jpg"


@dataclass
class Account:
    """Real values of the running simulator, read once per session."""

    sim_url: str
    webhook_url: str
    profile_id: str
    long_code: str
    short_code: str
    recipient: str
    phone_number_id: str
    mobile_number_id: str
    message_id: str
    group_message_id: str
    bulk_order_id: str
    #: One fixed future time for the whole session, so a request sent again with the same Idempotency-Key has
    #: the same body (the generated tests reuse one key across the loose, strict and async variants).
    send_at: str


class Rewriter:
    def __init__(self, account: Account) -> None:
        self.account = account

    def options(self, options: FinalRequestOptions) -> FinalRequestOptions:
        url = self._url(options.method.lower(), options.url)
        update: dict[str, Any] = {"url": url}
        if isinstance(options.json_data, dict):
            update["json_data"] = self._body(url, dict(options.json_data))
        if isinstance(options.params, dict):
            update["params"] = self._query(dict(options.params))
        return options.model_copy(update=update)

    def _url(self, method: str, url: str) -> str:
        a = self.account
        if url == f"/messages/{PLACEHOLDER_ID}":
            # A cancel needs a message of its own still scheduled; a retrieve any existing message.
            return f"/messages/{self.scheduled_message() if method == 'delete' else a.message_id}"
        replacements = {
            f"/messages/group/{PLACEHOLDER_ID}": f"/messages/group/{a.group_message_id}",
            "/phone_numbers/id/messaging": f"/phone_numbers/{a.phone_number_id}/messaging",
            "/mobile_phone_numbers/id/messaging": f"/mobile_phone_numbers/{a.mobile_number_id}/messaging",
            "/messaging_numbers_bulk_updates/order_id": f"/messaging_numbers_bulk_updates/{a.bulk_order_id}",
        }
        return replacements.get(url, url)

    def _body(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        a = self.account
        if body.get("messaging_profile_id") in PLACEHOLDER_PROFILES:
            body["messaging_profile_id"] = a.profile_id
        for field in ("webhook_url", "webhook_failover_url"):
            if field in body:
                body[field] = a.webhook_url
        if url == "/messaging_numbers_bulk_updates":
            # A number the account owns, put on the profile it is on already: nothing else moves.
            body["numbers"] = [a.long_code]
        return self._message(url, body) if url.startswith("/messages") else body

    def _message(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        """A send: an owned sender of the endpoint's kind, a real recipient, content, a future ``send_at``."""
        a = self.account
        if url in SENDER_OF:
            body["from"] = a.short_code if SENDER_OF[url] == "short_code" else a.long_code
        if body.get("to") == "+E.164":
            body["to"] = a.recipient
        if "send_at" in body or url == "/messages/schedule":
            body["send_at"] = a.send_at
        if body.get("media_urls"):
            body["media_urls"] = [u if re.match(r"https?://", u) else MEDIA for u in body["media_urls"]]
        if url == "/messages/whatsapp":
            if body.get("whatsapp_message") == {}:
                body["whatsapp_message"] = {"type": "text", "text": {"body": TEXT}}
        elif not body.get("text") and not body.get("media_urls"):
            body["text"] = TEXT
        return body

    def _query(self, params: dict[str, Any]) -> dict[str, Any]:
        """Paging starts at 1 (Telnyx: ``page[number]`` >= 1, ``page[size]`` 1..250); filters name real things."""
        for field, first in (("page[number]", 1), ("page_number", 1), ("page[size]", 20), ("page_size", 20)):
            if params.get(field) == 0:
                params[field] = first
        filters = params.get("filter")
        if isinstance(filters, dict):
            params["filter"] = {**filters, **({"messaging_profile_id": self.account.profile_id}
                                              if filters.get("messaging_profile_id") in PLACEHOLDER_PROFILES else {}),
                                **({"from": self.account.long_code} if filters.get("from") == "from" else {})}
        if params.get("filter[messaging_profile_id]") in PLACEHOLDER_PROFILES:
            params["filter[messaging_profile_id]"] = self.account.profile_id
        if params.get("redaction_enabled") == "redaction_enabled":
            params["redaction_enabled"] = "false"
        return params

    def scheduled_message(self) -> str:
        """A new message scheduled for tomorrow: something a cancel can cancel."""
        body = {"from": self.account.long_code, "to": self.account.recipient, "text": TEXT,
                "send_at": self.account.send_at}
        answer = httpx.post(f"{self.account.sim_url}/v2/messages/schedule", json=body,
                            headers={"Authorization": "Bearer sdk-tests"})
        answer.raise_for_status()
        return str(answer.json()["data"]["id"])


def future_send_at() -> str:
    """A ``send_at`` inside Telnyx's window (5 minutes to 5 days ahead), to the minute."""
    return (datetime.now(UTC) + timedelta(days=1)).replace(second=0, microsecond=0).isoformat()
