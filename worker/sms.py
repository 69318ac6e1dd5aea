"""SMS rules shared by producer validation and the simulator: encodings, segments, sender formats.

Segments follow 3GPP TS 23.038/23.040 as Telnyx bills them: GSM-7 fits 160 septets in one part or 153 per
part of a concatenated message, with extension characters costing 2 septets and never split across parts;
anything outside GSM-7 turns the whole message into UCS-2, 70 code units in one part or 67 per part, with a
surrogate pair (an emoji) never split. Telnyx refuses more than 10 parts (40302).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")
MAX_PARTS = 10

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
SHORT_CODE = re.compile(r"^\d{5,6}$")
#: 1-11 characters of letters, digits and spaces, at least one letter.
ALPHANUMERIC = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}$")


@dataclass(frozen=True)
class Segments:
    encoding: str  # "GSM-7" or "UCS-2", as Telnyx names them
    parts: int
    units: int  # septets for GSM-7, UTF-16 code units for UCS-2


def _count(sizes: list[int], single: int, per_part: int) -> int:
    if sum(sizes) <= single:
        return 1
    parts, used = 1, 0
    for size in sizes:
        if used + size > per_part:
            parts, used = parts + 1, 0
        used += size
    return parts


def segments(text: str) -> Segments:
    """How ``text`` is encoded and into how many parts it is split."""
    if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text):
        sizes = [2 if c in GSM7_EXTENSION else 1 for c in text]
        return Segments("GSM-7", _count(sizes, 160, 153), sum(sizes))
    sizes = [2 if ord(c) > 0xFFFF else 1 for c in text]
    return Segments("UCS-2", _count(sizes, 70, 67), sum(sizes))


#: NANP toll-free area codes: such numbers are metered as toll-free senders, not long codes.
TOLL_FREE = re.compile(r"^\+1(800|833|844|855|866|877|888)\d{7}$")


def is_e164(value: str) -> bool:
    return bool(E164.match(value))


def is_toll_free(value: str) -> bool:
    return bool(TOLL_FREE.match(value))


def sender_kind(sender: str) -> str | None:
    """``long_code``, ``short_code`` or ``alphanumeric`` by the sender's format; None if it is none."""
    if is_e164(sender):
        return "long_code"
    if SHORT_CODE.match(sender):
        return "short_code"
    if ALPHANUMERIC.match(sender):
        return "alphanumeric"
    return None
