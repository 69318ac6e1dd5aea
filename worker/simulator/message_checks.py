"""What a send must carry, checked as Telnyx checks it: the recipient, the content, ``send_at`` and the
simulator's ``x-sim-outcome`` header; and the WhatsApp body a send answers with.

Pure functions of the request, raising :class:`~worker.simulator.http.Refusal` with Telnyx's status and code;
who may send (the account's numbers and profiles) is :class:`~worker.simulator.messages.MessageEndpoints`'
to judge.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request

import worker.simulator.rules as rules
from worker.simulator.http import Refusal

MAX_MEDIA = 10
SCHEDULE_MIN = timedelta(minutes=5)
SCHEDULE_MAX = timedelta(days=5)
#: Delivery errors the simulator reports, by final status (real Telnyx codes).
OUTCOME_ERRORS = {
    "delivery_failed": {"code": "40008", "title": "Undeliverable",
                        "detail": "The recipient carrier did not accept the message."},
    "sending_failed": {"code": "40006", "title": "Recipient server unavailable",
                       "detail": "The recipient server is unavailable."},
    "expired": {"code": "40014", "title": "Message expired in queue",
                "detail": "The message expired while in queue. You were not billed for it."},
    "delivery_unconfirmed": None,
    "delivered": None,
}
#: The per-request header that decides every recipient's final status (instead of the configured mix).
OUTCOME_HEADER = "x-sim-outcome"
WHATSAPP_TYPES = {"audio", "document", "image", "sticker", "video", "interactive", "location", "template",
                  "reaction", "contacts", "text"}


def missing(field: str) -> Refusal:
    return Refusal(400, "10004", "Missing required parameter", f"The '{field}' parameter is required.", f"/{field}")


def bad_from(detail: str | None = None) -> Refusal:
    return Refusal(400, "40305", "Invalid 'from' address",
                   detail or "The 'from' address should be a valid phone number, short code or alphanumeric sender "
                             "ID associated with the sending messaging profile.", "/from")


def check_to(to: Any) -> str:
    if to in (None, ""):
        raise missing("to")
    if not rules.is_recipient(to):
        raise Refusal(400, "40310", "Invalid 'to' address", "The 'to' address should be a single valid number.",
                      "/to")
    return str(to)


def check_content(body: dict[str, Any], *, mms_allowed: bool = True) -> tuple[str, list[str], bool]:
    text = body.get("text") or ""
    media = body.get("media_urls") or []
    if not isinstance(media, list) or not all(isinstance(u, str) and u.startswith(("http://", "https://"))
                                              for u in media):
        raise Refusal(400, "10003", "Invalid URL", "media_urls must be a list of http(s) URLs.", "/media_urls")
    if not text and not media:
        raise Refusal(400, "40316", "No content provided", "Provide 'text' and/or 'media_urls'.")
    if len(media) > MAX_MEDIA:
        raise Refusal(400, "40317", "Invalid MMS content",
                      "MMS can contain up to 10 items and the total size must be less than 1 MB.", "/media_urls")
    mms = bool(media) or body.get("type") == "MMS"
    if mms and not mms_allowed:
        raise Refusal(400, "40304", "Invalid combination of content arguments", "This sender can send SMS only.")
    if not mms:
        parts = rules.encode(text).parts
        if parts > rules.MAX_PARTS:
            raise Refusal(400, "40302", "Message too large",
                          f"The message was divided into {parts} parts. The maximum is {rules.MAX_PARTS}.")
    return text, media, mms


def check_send_at(value: Any, *, required: bool) -> datetime | None:
    if value in (None, ""):
        if required:
            raise missing("send_at")
        return None
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise Refusal(400, "10015", "Bad Request", "send_at must be an ISO-8601 date-time.", "/send_at") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ahead = when - datetime.now(UTC)
    if not SCHEDULE_MIN <= ahead <= SCHEDULE_MAX:
        raise Refusal(400, "10015", "Invalid send_at",
                      "send_at must be at least 5 minutes and at most 5 days in the future.", "/send_at")
    return when


def check_outcome(request: Request) -> str | None:
    outcome = request.headers.get(OUTCOME_HEADER)
    if outcome is not None and outcome not in OUTCOME_ERRORS:
        raise Refusal(400, "10015", "Bad Request", f"{OUTCOME_HEADER} must be one of {', '.join(OUTCOME_ERRORS)}.")
    return outcome


def whatsapp_body(content: dict[str, Any]) -> dict[str, Any]:
    """The answer's ``body``: the content of the message's one ``type`` (a request may carry objects of other
    types; they are not sent), in the spec's response shape, where a contact's ``name`` is a string."""
    kind = content["type"]
    body = {"type": kind, kind: copy.deepcopy(content.get(kind))}
    if kind == "contacts" and isinstance(body[kind], list):
        for contact in body[kind]:
            name = contact.get("name") if isinstance(contact, dict) else None
            if isinstance(name, dict):
                contact["name"] = name.get("formatted_name")
    return body
