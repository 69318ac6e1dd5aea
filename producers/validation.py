"""Turning a caller's request into a message Telnyx will accept, or a ValidationError naming the field.

The producer refuses what Telnyx would refuse, before anything is stored or enqueued.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from worker import sms
from worker.errors import ValidationError
from worker.store import NewMessage

KINDS = ("auto", "long_code", "short_code", "alphanumeric", "number_pool", "group_mms", "whatsapp")
PRIORITIES = ("urgent", "normal", "bulk")
IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
MAX_MEDIA = 10
#: Kinds whose sender must have this format (by :func:`worker.sms.sender_kind`).
SENDER_FORMAT = {"long_code": "long_code", "short_code": "short_code", "alphanumeric": "alphanumeric"}


@dataclass(frozen=True)
class SendRequest:
    """What a caller asks for, before validation. Field names are the ones errors report."""

    to: str
    text: str | None = None
    media_urls: Sequence[str] = ()
    from_: str | None = None
    profile: str | None = None
    kind: str = "auto"
    priority: str = "normal"
    idempotency_key: str | None = None


def _check_choice(field: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValidationError(field, f"must be one of {', '.join(choices)} (got {value!r})")


def _check_to(to: Any) -> str:
    if not isinstance(to, str) or not (sms.is_e164(to) or sms.SHORT_CODE.match(to)):
        raise ValidationError("to", f"must be an E.164 number like +13125550123 (got {to!r})")
    return to


def _check_profile(profile: str | None) -> str | None:
    if profile is None:
        return None
    try:
        uuid.UUID(profile)
    except ValueError:
        raise ValidationError("profile", f"must be a messaging profile UUID (got {profile!r})") from None
    return profile


def _check_media(urls: Sequence[str]) -> list[str]:
    urls = list(urls)
    if len(urls) > MAX_MEDIA:
        raise ValidationError("media", f"at most {MAX_MEDIA} media URLs (got {len(urls)})")
    for url in urls:
        if not re.match(r"^https?://[^\s/]+\S*$", url) or len(url) > 2000:
            raise ValidationError("media", f"must be an http(s) URL of at most 2000 characters (got {url!r})")
    return urls


def _check_text(text: str | None, media: list[str]) -> str | None:
    if text is not None and not text.strip():
        text = None
    if text is None and not media:
        raise ValidationError("text", "a message needs text or media")
    if text is not None and not media:
        parts = sms.segments(text).parts
        if parts > sms.MAX_PARTS:
            raise ValidationError("text", f"splits into {parts} SMS parts; Telnyx allows {sms.MAX_PARTS}")
    return text


def _auto_kind(sender: str | None, profile: str | None) -> str:
    if sender:
        found = sms.sender_kind(sender)
        if found is None:
            raise ValidationError("from", f"not a phone number, short code or alphanumeric ID: {sender!r}")
        return found
    if profile:
        return "number_pool"
    raise ValidationError("from", "give a sender (--from) or a messaging profile (--profile)")


def resolve_kind(kind: str, sender: str | None, profile: str | None) -> str:
    """The concrete kind for ``auto``, and a check that the sender fits an explicit kind."""
    if kind == "auto":
        return _auto_kind(sender, profile)
    if kind in SENDER_FORMAT and (not sender or sms.sender_kind(sender) != SENDER_FORMAT[kind]):
        raise ValidationError("from", f"{kind} sends need a valid {kind.replace('_', ' ')} sender (got {sender!r})")
    if kind == "number_pool" and sender:
        raise ValidationError("from", "number pool sends pick the sender; give --profile only")
    if kind == "number_pool" and not profile:
        raise ValidationError("profile", "number pool sends need a messaging profile")
    if kind in ("group_mms", "whatsapp"):
        raise ValidationError("kind", f"{kind} is not supported yet")
    return kind


def validate(request: SendRequest, *, webhook_url: str | None = None) -> NewMessage:
    """A storable message for ``request``; raises :class:`ValidationError` naming the first bad field."""
    _check_choice("kind", request.kind, KINDS)
    _check_choice("priority", request.priority, PRIORITIES)
    if request.idempotency_key is not None and not IDEMPOTENCY_KEY.match(request.idempotency_key):
        raise ValidationError("idempotency_key", "1-255 characters of letters, digits, '_' and '-'")
    to = _check_to(request.to)
    profile = _check_profile(request.profile)
    media = _check_media(request.media_urls)
    text = _check_text(request.text, media)
    kind = resolve_kind(request.kind, request.from_, profile)
    if kind == "alphanumeric":
        if media:
            raise ValidationError("media", "alphanumeric senders can send SMS only")
        if not profile:
            raise ValidationError("profile", "alphanumeric senders need their messaging profile")

    body: dict[str, Any] = {"to": to}
    if request.from_:
        body["from"] = request.from_
    if profile:
        body["messaging_profile_id"] = profile
    if text is not None:
        body["text"] = text
    if media:
        body["media_urls"] = media
        body["type"] = "MMS"
    if webhook_url:
        body["webhook_url"] = webhook_url
    return NewMessage(
        kind=kind, priority=request.priority, recipients=[to], endpoint="/messages", body=body,
        sender=request.from_, messaging_profile_id=profile, idempotency_key=request.idempotency_key,
    )
