"""SMS rules shared by producer validation and the simulator: encodings, segments, sender formats.

Numbers are checked with ``phonenumbers`` (see :func:`e164`).

Segments follow 3GPP TS 23.038/23.040 as Telnyx bills them: GSM-7 fits 160 septets in one part or 153 per
part of a concatenated message, with extension characters costing 2 septets and never split across parts;
anything outside GSM-7 turns the whole message into UCS-2, 70 code units in one part or 67 per part, with a
surrogate pair (an emoji) never split. Telnyx refuses more than 10 parts (40302).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import phonenumbers

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")
MAX_PARTS = 10

#: A cheap first filter before ``phonenumbers`` parses: ``[0-9]`` (not ``\d``, which takes Arabic-Indic or
#: fullwidth digits) and ``\Z`` (``$`` would let a trailing newline through), so ``.match`` is safe too.
E164 = re.compile(r"^\+[1-9][0-9]{1,14}\Z")
SHORT_CODE = re.compile(r"^[0-9]{5,6}\Z")
#: 1-11 characters of ASCII letters, digits and spaces, at least one letter (no tab, newline or other control).
ALPHANUMERIC = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}\Z")


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


def e164(value: Any) -> str | None:
    """``value`` if it is a phone number written exactly in E.164 form, else None.

    ``phonenumbers`` parses with no default region, so the leading ``+`` and country code are required, and the
    number must be *possible* (a length its country's plan allows). The raw string must equal the E.164
    formatting of what was parsed: the parser itself is lenient (it drops spaces, punctuation, a trailing
    newline or an extension and maps other scripts' digits to ASCII), and a number stored in any other spelling
    would be sent to Telnyx as such and missed by the suppression list, which compares strings.

    ``is_valid_number`` is deliberately not required: it also checks the number against each country's
    allocated ranges, which refuses the fictional ranges tests, the demo and the simulator use
    (``+1312555xxxx`` is fine, but ``+1555...`` or the UK drama range ``+447700900xxx`` are not "valid") and
    lags behind real allocations; Telnyx refuses an unallocated number itself, with an error the record keeps.
    """
    if not isinstance(value, str) or not E164.fullmatch(value):
        return None
    return _e164(value)


#: NANP: ``+1`` and 10 ASCII digits is always possible and already in E.164 form (checked against phonenumbers
#: over 150,000 random such strings). Campaigns are mostly NANP, and parsing costs ~20 us a row.
NANP_LENGTH = 12


@functools.lru_cache(maxsize=1024)  # a campaign row is checked twice in a row (cells, then check_row)
def _e164(value: str) -> str | None:
    if len(value) == NANP_LENGTH and value.startswith("+1"):
        return value
    try:
        parsed = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return value if phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) == value else None


def is_e164(value: Any) -> bool:
    """Whether ``value`` is a possible phone number written exactly in E.164 form (see :func:`e164`)."""
    return e164(value) is not None


def is_toll_free(value: str) -> bool:
    return bool(TOLL_FREE.match(value))


def sender_kind(sender: Any) -> str | None:
    """``long_code``, ``short_code`` or ``alphanumeric`` by the sender's format; None if it is none."""
    if not isinstance(sender, str):
        return None
    if is_e164(sender):
        return "long_code"
    if SHORT_CODE.fullmatch(sender):
        return "short_code"
    if ALPHANUMERIC.fullmatch(sender):
        return "alphanumeric"
    return None


def is_short_code(value: Any) -> bool:
    return isinstance(value, str) and SHORT_CODE.fullmatch(value) is not None
