"""Telnyx's addressing and content rules, as the simulator applies them.

Written from Telnyx's documentation (developers.telnyx.com: message encoding, alphanumeric sender ID, error codes
10016 / 40302 / 40305 / 40310 / 40325) and deliberately *not* shared with sendq's own validation
(``worker.sms``): the simulator is the judge of what sendq sends, so a mistake in sendq's rules must meet a
refusal here instead of being accepted by the same code that made it. ``tests/test_simulator_independence.py``
keeps it that way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: +E.164: a plus, a country code not starting with 0, at most 15 digits in all (ITU-T E.164). ASCII digits only
#: and ``\Z``, not ``$``, which would let a trailing newline through.
E164 = re.compile(r"\+[1-9][0-9]{6,14}\Z")
#: North America (+1) numbers are always 10 digits after the country code.
NANP = re.compile(r"\+1[0-9]{10}\Z")
#: US short codes are 5 or 6 digits.
SHORT_CODE = re.compile(r"[0-9]{5,6}\Z")
#: "1-11 characters: letters, digits and spaces, at least one letter" (alphanumeric sender ID page).
ALPHANUMERIC = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}\Z")
#: NANP toll-free area codes.
TOLL_FREE = re.compile(r"\+1(800|833|844|855|866|877|888)[0-9]{7}\Z")

#: The GSM 03.38 default alphabet and its extension table (an extension character is sent as two septets).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")
#: Telnyx's limit: "Maximum 10 segments per message" (40302 beyond it).
MAX_PARTS = 10


def is_phone_number(value: object) -> bool:
    """Whether ``value`` is a number in +E.164 form (Telnyx: 10016 "number must be +E.164")."""
    if not isinstance(value, str) or not E164.match(value):
        return False
    return not value.startswith("+1") or bool(NANP.match(value))


def sender_kind(value: object) -> str | None:
    """``long_code``, ``toll_free``, ``short_code`` or ``alphanumeric`` by the address's form; None if none."""
    if not isinstance(value, str):
        return None
    if is_phone_number(value):
        return "toll_free" if TOLL_FREE.match(value) else "long_code"
    if SHORT_CODE.match(value):
        return "short_code"
    if ALPHANUMERIC.match(value):
        return "alphanumeric"
    return None


def is_recipient(value: object) -> bool:
    """A 'to' Telnyx takes: "a single valid number" (+E.164) or a short code."""
    return sender_kind(value) in ("long_code", "toll_free", "short_code")


@dataclass(frozen=True)
class Encoded:
    encoding: str  # "GSM-7" or "UCS-2", Telnyx's names
    parts: int


def _parts(sizes: list[int], single: int, per_part: int) -> int:
    """Parts of a text whose characters take ``sizes`` units; a character is never split across parts."""
    if sum(sizes) <= single:
        return 1
    parts, used = 1, 0
    for size in sizes:
        if used + size > per_part:
            parts, used = parts + 1, 0
        used += size
    return parts


def encode(text: str) -> Encoded:
    """How Telnyx encodes and splits an SMS: GSM-7 160 / 153 septets a part, else UCS-2 70 / 67 code units
    (one non-GSM character turns the whole message into UCS-2; an emoji is two UCS-2 units)."""
    if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text):
        return Encoded("GSM-7", _parts([2 if c in GSM7_EXTENSION else 1 for c in text], 160, 153))
    return Encoded("UCS-2", _parts([2 if ord(c) > 0xFFFF else 1 for c in text], 70, 67))
