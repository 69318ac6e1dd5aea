"""Turning a caller's request into a message Telnyx will accept, or a ValidationError naming the field.

The producer refuses what Telnyx would refuse, before anything is stored or enqueued. Each kind maps to
its own Telnyx endpoint and body:

=============  ===================================  ================================================
kind           endpoint                             sender
=============  ===================================  ================================================
long_code      /messages/long_code (/messages for   E.164 number (toll-free numbers use the general
               toll-free numbers)                   endpoint)
short_code     /messages/short_code                 5-6 digit short code
alphanumeric   /messages/alphanumeric_sender_id     1-11 letters/digits/spaces with a letter, plus the
                                                    messaging profile; SMS only
number_pool    /messages/number_pool                none: the profile's pool picks one
group_mms      /messages/group_mms                  E.164 number; 1-8 recipients
whatsapp       /messages/whatsapp                   E.164 number (WhatsApp-enabled)
=============  ===================================  ================================================

``auto`` picks the kind from the sender's format (or ``number_pool`` for a profile and no sender).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from worker import sms, statuses
from worker.errors import ValidationError
from worker.store import NewMessage
from worker.telnyx.messages import ENDPOINTS

SCHEDULE_MODES = ("local", "telnyx")
#: How far ahead sendq itself schedules, and how far in the past a send_at may be (clock skew) before it
#: is refused rather than sent now.
MAX_HORIZON = timedelta(days=366)
PAST_TOLERANCE = timedelta(seconds=60)
#: Telnyx-side scheduling window (POST /messages/schedule).
TELNYX_SCHEDULE_MIN = timedelta(minutes=5)
TELNYX_SCHEDULE_MAX = timedelta(days=5)
MAX_VALID_FOR_S = 366 * 24 * 3600
KINDS = ("auto", "long_code", "short_code", "alphanumeric", "number_pool", "group_mms", "whatsapp")
PRIORITIES = ("urgent", "normal", "bulk")
# ``\Z``, not ``$``: ``$`` also matches before a trailing newline.
IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_-]{1,255}\Z")
#: The canonical 8-4-4-4-12 form only: ``uuid.UUID`` also takes braces, ``urn:uuid:`` and bare hex, which would be
#: stored and sent to Telnyx as given.
PROFILE_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
#: C0 control characters (and DEL) that text may not carry: a NUL or an escape reaching a handset is never meant.
#: Tab, newline and carriage return are text.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MEDIA_URL = re.compile(r"^https?://[^\s/]+\S*\Z")
MAX_MEDIA = 10
MAX_GROUP_RECIPIENTS = 8
#: The sender format (:func:`worker.sms.sender_kind`) each kind needs.
SENDER_FORMAT = {"long_code": "long_code", "short_code": "short_code", "alphanumeric": "alphanumeric",
                 "group_mms": "long_code", "whatsapp": "long_code"}


@dataclass(frozen=True)
class SendRequest:
    """What a caller asks for, before validation. Field names are the ones errors report."""

    to: str | Sequence[str]
    text: str | None = None
    media_urls: Sequence[str] = ()
    from_: str | None = None
    profile: str | None = None
    kind: str = "auto"
    priority: str = "normal"
    idempotency_key: str | None = None
    #: A complete WhatsApp message object (templates, locations, ...), instead of text or media.
    whatsapp_message: Mapping[str, Any] | None = None
    #: When to send (aware datetime or ISO-8601 with an offset); None sends now.
    send_at: datetime | str | None = None
    #: Seconds the message stays worth sending, from ``send_at`` (or now); then it ends ``expired``.
    valid_for: int | None = None
    #: ``local``: sendq holds the message until due; ``telnyx``: Telnyx holds it (5 minutes to 5 days ahead).
    schedule_mode: str = "local"


def _check_choice(field: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValidationError(field, f"must be one of {', '.join(choices)} (got {value!r})")


def check_control(field: str, text: str, *, what: str = "text") -> None:
    """Refuse ``text`` carrying a control character other than tab, newline and carriage return."""
    found = CONTROL.search(text)
    if found:
        raise ValidationError(field, f"{what} contains the control character {found.group()!r} "
                                     f"at position {found.start() + 1}")


def check_e164(value: Any, field: str) -> str:
    """``value`` if it is a phone number written exactly in E.164 form, else a ValidationError naming ``field``."""
    number = sms.e164(value)
    if number is None:
        raise ValidationError(field, f"must be a phone number in E.164 form like +13125550123 (got {value!r})")
    return number


def _check_number(to: Any) -> str:
    if sms.is_short_code(to):
        return str(to)
    return check_e164(to, "to")


def _check_recipients(to: str | Sequence[str], kind: str) -> list[str]:
    if isinstance(to, str):
        recipients = [to]
    elif isinstance(to, Sequence):
        recipients = list(to)
    else:
        raise ValidationError("to", f"must be an E.164 number, or a list of them for group_mms (got {to!r})")
    if kind != "group_mms" and len(recipients) != 1:
        raise ValidationError("to", "only group_mms sends go to several recipients")
    if not 1 <= len(recipients) <= MAX_GROUP_RECIPIENTS:
        raise ValidationError("to", f"a group MMS goes to 1 to {MAX_GROUP_RECIPIENTS} recipients")
    if len(set(recipients)) != len(recipients):
        raise ValidationError("to", "the same recipient is listed twice")
    return [_check_number(r) for r in recipients]


def _check_profile(profile: str | None) -> str | None:
    if profile is None:
        return None
    if not isinstance(profile, str) or not PROFILE_UUID.match(profile):
        raise ValidationError("profile", f"must be a messaging profile UUID (got {profile!r})")
    return profile


def _check_media(urls: Sequence[str]) -> list[str]:
    if isinstance(urls, str) or not isinstance(urls, Sequence):
        raise ValidationError("media", f"must be a list of URLs (got {urls!r})")
    urls = list(urls)
    if len(urls) > MAX_MEDIA:
        raise ValidationError("media", f"at most {MAX_MEDIA} media URLs (got {len(urls)})")
    for url in urls:
        if not isinstance(url, str) or not MEDIA_URL.match(url) or len(url) > 2000:
            raise ValidationError("media", f"must be an http(s) URL of at most 2000 characters (got {url!r})")
    return urls


def _check_text(text: str | None, media: list[str], *, whatsapp: bool) -> str | None:
    if text is not None and not isinstance(text, str):
        raise ValidationError("text", f"must be a string (got {type(text).__name__})")
    if text is not None:
        check_control("text", text)
    if text is not None and not text.strip():
        text = None
    if text is None and not media and not whatsapp:
        raise ValidationError("text", "a message needs text or media")
    if text is not None and not media and not whatsapp:
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
    if sender is not None and not isinstance(sender, str):
        raise ValidationError("from", f"must be a string (got {sender!r})")
    if kind == "auto":
        kind = _auto_kind(sender, profile)
    if kind in SENDER_FORMAT and (not sender or sms.sender_kind(sender) != SENDER_FORMAT[kind]):
        wanted = SENDER_FORMAT[kind].replace("_", " ")
        raise ValidationError("from", f"{kind} sends need a {wanted} sender (got {sender!r})")
    if kind == "number_pool" and sender:
        raise ValidationError("from", "number pool sends pick the sender; give --profile only")
    if kind in ("number_pool", "alphanumeric") and not profile:
        raise ValidationError("profile", f"{kind} sends need a messaging profile")
    return kind


def _whatsapp_message(request: SendRequest, text: str | None, media: list[str]) -> dict[str, Any]:
    if request.whatsapp_message is not None:
        if not isinstance(request.whatsapp_message, Mapping):
            raise ValidationError("whatsapp_message", "must be a WhatsApp message object")
        if not isinstance(request.whatsapp_message.get("type"), str):
            raise ValidationError("whatsapp_message", "needs a 'type' (text, image, template, ...)")
        return dict(request.whatsapp_message)
    if len(media) > 1:
        raise ValidationError("media", "a WhatsApp message carries one media item")
    if media:
        return {"type": "image", "image": {"link": media[0], **({"caption": text} if text else {})}}
    if text is None:
        raise ValidationError("text", "a message needs text, media or a whatsapp_message")
    return {"type": "text", "text": {"body": text, "preview_url": False}}


def _endpoint(kind: str, sender: str | None) -> str:
    if kind == "long_code" and sender and sms.is_toll_free(sender):
        return ENDPOINTS["message"]
    return ENDPOINTS[kind]


def _body(kind: str, request: SendRequest, recipients: list[str], profile: str | None, text: str | None,
          media: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"to": recipients if kind == "group_mms" else recipients[0]}
    if request.from_:
        body["from"] = request.from_
    if kind == "whatsapp":
        body["whatsapp_message"] = _whatsapp_message(request, text, media)
        body["type"] = "WHATSAPP"
        if profile:
            body["messaging_profile_id"] = profile
        return body
    if profile and kind in ("number_pool", "alphanumeric"):
        body["messaging_profile_id"] = profile
    if text is not None:
        body["text"] = text
    if media:
        body["media_urls"] = media
        if kind != "group_mms":
            body["type"] = "MMS"
    return body


def parse_send_at(value: datetime | str | None, now: datetime) -> datetime | None:
    """``send_at`` as an aware UTC datetime (None for now); naive times are refused, not guessed."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError("send_at", f"not an ISO-8601 date-time: {value!r}") from None
    if not isinstance(value, datetime):
        raise ValidationError("send_at", f"must be a datetime or an ISO-8601 string (got {value!r})")
    if value.tzinfo is None:
        raise ValidationError("send_at", "give a UTC offset (e.g. 2026-12-01T09:00:00+01:00 or ...Z)")
    value = value.astimezone(UTC)
    if value < now - PAST_TOLERANCE:
        raise ValidationError("send_at", f"{value.isoformat()} is in the past")
    if value > now + MAX_HORIZON:
        raise ValidationError("send_at", "at most a year ahead")
    return value


def _schedule(request: SendRequest, kind: str, send_at: datetime | None, now: datetime) -> str:
    """The endpoint for Telnyx-side scheduling, after checking Telnyx's window; '' for local scheduling."""
    _check_choice("schedule_mode", request.schedule_mode, SCHEDULE_MODES)
    if request.schedule_mode == "local":
        return ""
    if send_at is None or not TELNYX_SCHEDULE_MIN <= send_at - now <= TELNYX_SCHEDULE_MAX:
        raise ValidationError("send_at", "Telnyx-side scheduling needs send_at 5 minutes to 5 days ahead")
    if kind in ("group_mms", "whatsapp"):
        raise ValidationError("schedule_mode", f"Telnyx cannot schedule {kind} messages; use local scheduling")
    return ENDPOINTS["schedule"]


def _valid_until(valid_for: int | None, start: datetime) -> datetime | None:
    if valid_for is None:
        return None
    # bool is an int to Python, but ``valid_for=True`` is a mistake, not one second.
    if isinstance(valid_for, bool) or not isinstance(valid_for, int) or not 1 <= valid_for <= MAX_VALID_FOR_S:
        raise ValidationError("valid_for", f"whole seconds from 1 to {MAX_VALID_FOR_S} (got {valid_for!r})")
    return start + timedelta(seconds=valid_for)


def validate(request: SendRequest, *, webhook_url: str | None = None, urgent_valid_for_s: int | None = None,
             now: datetime | None = None) -> NewMessage:
    """A storable message for ``request``; raises :class:`ValidationError` naming the first bad field.

    Urgent messages without a ``valid_for`` get ``urgent_valid_for_s``: a late 2FA code is not sent at all.
    """
    now = now or datetime.now(UTC)
    _check_choice("kind", request.kind, KINDS)
    _check_choice("priority", request.priority, PRIORITIES)
    key = request.idempotency_key
    if key is not None and not (isinstance(key, str) and IDEMPOTENCY_KEY.match(key)):
        raise ValidationError("idempotency_key", "1-255 characters of letters, digits, '_' and '-'")
    profile = _check_profile(request.profile)
    kind = resolve_kind(request.kind, request.from_, profile)
    recipients = _check_recipients(request.to, kind)
    media = _check_media(request.media_urls)
    text = _check_text(request.text, media, whatsapp=kind == "whatsapp")
    if kind == "alphanumeric" and media:
        raise ValidationError("media", "alphanumeric senders can send SMS only")
    send_at = parse_send_at(request.send_at, now)
    telnyx_schedule = _schedule(request, kind, send_at, now)
    valid_for = request.valid_for
    if valid_for is None and request.priority == "urgent":
        valid_for = urgent_valid_for_s
    valid_until = _valid_until(valid_for, max(send_at or now, now))
    body = _body(kind, request, recipients, profile, text, media)
    if webhook_url:
        body["webhook_url"] = webhook_url
    if telnyx_schedule:
        body["send_at"] = send_at.isoformat()  # type: ignore[union-attr]
    held = send_at is not None and send_at > now and not telnyx_schedule
    return NewMessage(
        kind=kind, priority=request.priority, recipients=recipients,
        endpoint=telnyx_schedule or _endpoint(kind, request.from_), body=body, sender=request.from_,
        messaging_profile_id=profile, idempotency_key=request.idempotency_key,
        status=statuses.SCHEDULED if held else statuses.QUEUED, send_at=send_at, valid_until=valid_until,
    )
