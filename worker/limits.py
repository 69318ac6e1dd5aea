"""Rate-limit configuration: how many messages per second each sender and the account may send.

Three sources, most specific first (see README "Rate limits"):

1. a live override stored in Redis (``sendq limits set``), read by :class:`worker.limiter.Limiter`;
2. ``SENDQ_RATE_LIMITS``, a JSON object by sender type or by exact sender;
3. :data:`DEFAULT_MPS`, from Telnyx's documented defaults.

An exact sender (a number, short code, alphanumeric ID, or a profile id for a number pool) wins over its type;
at the same level a live override wins over the configuration. The account SMS and MMS rates come from
``SENDQ_ACCOUNT_MPS`` or :data:`DEFAULT_ACCOUNT_MPS`.

This module is pure: no Redis, no environment. It also maps a message to what it is metered against
(:func:`keys_for`, :func:`message_cost`, :func:`meter`).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker import sms
from worker.errors import ValidationError

SENDER_TYPES = ("long_code", "toll_free", "short_code", "alphanumeric", "number_pool")
STREAMS = ("sms", "mms")
COST_MODES = ("segments", "message")
#: Messages (SMS parts) per second per sender, when nothing else is configured. Telnyx's documented defaults,
#: except where they do not apply to US traffic (README "Rate limits" gives the reasons):
#: long_code 1 (Telnyx's 0.1 is for non-US destinations; US 10DLC throughput is per campaign and 1 MPS is the
#: usual floor), number_pool 1 (Telnyx multiplies the per-number rate by a pool size sendq cannot know).
DEFAULT_MPS = {"long_code": 1.0, "toll_free": 20.0, "short_code": 1000.0, "alphanumeric": 0.1, "number_pool": 1.0}
#: Account-wide messages per second (Telnyx's defaults).
DEFAULT_ACCOUNT_MPS = {"sms": 50.0, "mms": 15.0}
RATE_LIMITS_FIELD = "SENDQ_RATE_LIMITS"
ACCOUNT_MPS_FIELD = "SENDQ_ACCOUNT_MPS"


def check_mps(value: Any, field: str) -> float:
    """``value`` as a positive, finite rate; ValidationError naming ``field`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(field, f"must be a number of messages per second (got {value!r})")
    if not math.isfinite(value) or value <= 0:
        raise ValidationError(field, f"must be a positive number of messages per second (got {value!r})")
    return float(value)


def classify(name: str, field: str = "sender") -> tuple[str, str | None]:
    """``(sender type, sender)`` for a sender, or ``(type, None)`` for a sender type name.

    E.164 numbers are ``long_code`` or ``toll_free`` (NANP toll-free area codes), 5-6 digits ``short_code``,
    1-11 letters/digits/spaces with a letter ``alphanumeric``, a UUID a number pool's messaging profile.
    """
    if name in SENDER_TYPES:
        return name, None
    if sms.is_e164(name):
        return ("toll_free" if sms.is_toll_free(name) else "long_code"), name
    if _is_uuid(name):
        return "number_pool", name
    kind = sms.sender_kind(name)
    if kind in ("short_code", "alphanumeric"):
        return kind, name
    if name.replace("_", "").isalnum() and "_" in name:
        raise ValidationError(field, f"unknown sender type {name!r}; known: {', '.join(SENDER_TYPES)}")
    raise ValidationError(field, f"not a sender (E.164 number, short code, alphanumeric ID or messaging profile "
                                 f"UUID) nor a sender type ({', '.join(SENDER_TYPES)}): {name!r}")


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _json_object(value: Any, field: str) -> Mapping[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValidationError(field, f"is not valid JSON ({exc.msg})") from None
    if not isinstance(value, Mapping):
        raise ValidationError(field, "must be a JSON object of messages per second")
    return value


def parse_rate_limits(value: Any) -> dict[str, float]:
    """``SENDQ_RATE_LIMITS`` (a JSON string or a mapping) checked: sender or type name -> positive MPS."""
    limits: dict[str, float] = {}
    for name, mps in _json_object(value, RATE_LIMITS_FIELD).items():
        classify(str(name), RATE_LIMITS_FIELD)
        limits[str(name)] = check_mps(mps, f"{RATE_LIMITS_FIELD}[{name!r}]")
    return limits


def parse_account_mps(value: Any) -> dict[str, float]:
    """``SENDQ_ACCOUNT_MPS`` (a JSON string or a mapping) checked: ``sms`` / ``mms`` -> positive MPS."""
    rates: dict[str, float] = {}
    for name, mps in _json_object(value, ACCOUNT_MPS_FIELD).items():
        if name not in STREAMS:
            raise ValidationError(ACCOUNT_MPS_FIELD, f"unknown key {name!r}; known: {', '.join(STREAMS)}")
        rates[name] = check_mps(mps, f"{ACCOUNT_MPS_FIELD}[{name!r}]")
    return rates


@dataclass(frozen=True)
class Rate:
    """A rate and where it came from: ``source`` is override, config or default; ``matched`` the name it was
    found under (the sender itself, its type, or the account stream)."""

    mps: float
    source: str
    matched: str


@dataclass(frozen=True)
class LimitKeys:
    """What one message is metered against: its sender (type and id) and the account stream (sms or mms)."""

    sender_type: str
    sender: str
    account: str


@dataclass(frozen=True)
class Meter:
    """A message's limiter keys and its cost in slots."""

    keys: LimitKeys
    cost: int


class RateLimits:
    """The configured rates, answering "messages per second for this sender" given the live overrides."""

    def __init__(self, config: Mapping[str, float] | None = None, account: Mapping[str, float] | None = None):
        self.config = parse_rate_limits(dict(config or {}))
        self.account = parse_account_mps(dict(account or {}))

    @classmethod
    def from_settings(cls, settings: Any) -> RateLimits:
        return cls(settings.rate_limits, settings.account_mps)

    def sender_rate(self, sender_type: str, sender: str | None,
                    overrides: Mapping[str, float] | None = None) -> Rate:
        """The sender's rate: exact sender (override, then config), then its type (same order), then default."""
        overrides = overrides or {}
        for name in (sender, sender_type):
            if name is None:
                continue
            if name in overrides:
                return Rate(overrides[name], "override", name)
            if name in self.config:
                return Rate(self.config[name], "config", name)
        return Rate(DEFAULT_MPS[sender_type], "default", sender_type)

    def account_rate(self, stream: str) -> Rate:
        if stream in self.account:
            return Rate(self.account[stream], "config", stream)
        return Rate(DEFAULT_ACCOUNT_MPS[stream], "default", stream)

    def describe(self, overrides: Mapping[str, float] | None = None) -> dict[str, Any]:
        """Defaults, configuration, overrides and the effective rate of every sender type and account stream."""
        overrides = dict(overrides or {})
        effective = {t: vars(self.sender_rate(t, None, overrides)) for t in SENDER_TYPES}
        effective.update({f"account:{s}": vars(self.account_rate(s)) for s in STREAMS})
        return {"defaults": DEFAULT_MPS, "account_defaults": DEFAULT_ACCOUNT_MPS, "config": self.config,
                "account_config": self.account, "overrides": overrides, "effective": effective}


def keys_for(kind: str, sender: str | None, messaging_profile_id: str | None, *, mms: bool) -> LimitKeys | None:
    """The limiter keys of a message of ``kind``; None for WhatsApp, which SMS/MMS limits do not meter.

    Number pools are keyed by their messaging profile (Telnyx picks the number); every other kind by its sender.
    """
    if kind == "whatsapp":
        return None
    stream = "mms" if mms or kind == "group_mms" else "sms"
    if kind == "number_pool":
        if not messaging_profile_id:
            raise ValidationError("profile", "number pool sends need a messaging profile")
        return LimitKeys("number_pool", messaging_profile_id, stream)
    if not sender:
        raise ValidationError("from", f"{kind} sends need a sender")
    sender_type, _ = classify(sender, "from")
    return LimitKeys(sender_type, sender, stream)


def message_cost(text: str | None, *, mms: bool, recipients: int = 1, mode: str = "segments") -> int:
    """Slots one message takes: its SMS parts (``mode="segments"``) or 1 (``"message"``), per recipient.

    Carriers meter parts, not requests. An MMS is one message whatever its size; a group MMS counts one per
    recipient (each is delivered, and finalized, on its own).
    """
    if mode not in COST_MODES:
        raise ValidationError("SENDQ_LIMITER_COST", f"unknown mode {mode!r}; known: {', '.join(COST_MODES)}")
    per_recipient = 1 if mms or mode == "message" or not text else sms.segments(text).parts
    return per_recipient * max(1, recipients)


def meter(kind: str, sender: str | None, messaging_profile_id: str | None, body: Mapping[str, Any], *,
          cost_mode: str = "segments") -> Meter | None:
    """Keys and cost of a stored message (its kind, sender, profile and the Telnyx request body)."""
    mms = kind == "group_mms" or bool(body.get("media_urls"))
    keys = keys_for(kind, sender, messaging_profile_id, mms=mms)
    if keys is None:
        return None
    to = body.get("to")
    recipients = len(to) if isinstance(to, list) else 1
    return Meter(keys, message_cost(body.get("text"), mms=mms, recipients=recipients, mode=cost_mode))
