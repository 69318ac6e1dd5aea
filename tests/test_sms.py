"""Segment counting at its edges (3GPP TS 23.038/23.040, as Telnyx bills)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import sms

CASES = [
    ("", "GSM-7", 1),
    ("a" * 160, "GSM-7", 1),
    ("a" * 161, "GSM-7", 2),
    ("a" * 306, "GSM-7", 2),
    ("a" * 307, "GSM-7", 3),
    ("€" * 80, "GSM-7", 1),  # 160 septets: extension characters count 2
    ("€" * 81, "GSM-7", 2),
    ("a" * 152 + "€" + "a" * 152, "GSM-7", 3),  # 306 septets, but the escape pair is never split
    ("a" * 159 + "€", "GSM-7", 2),  # 161 septets
    ("a" * 158 + "€", "GSM-7", 1),  # 160 septets
    ("a" * 1530, "GSM-7", 10),
    ("a" * 1531, "GSM-7", 11),
    ("é" * 160, "GSM-7", 1),  # é is in the GSM-7 basic set
    ("ê" * 70, "UCS-2", 1),
    ("ê" * 71, "UCS-2", 2),
    ("😀" * 35, "UCS-2", 1),  # 70 UTF-16 units
    ("😀" * 36, "UCS-2", 2),
    ("ê" * 66 + "😀" + "ê" * 66, "UCS-2", 3),  # 134 units, but the surrogate pair is never split
    ("ê" * 670, "UCS-2", 10),
]


@pytest.mark.parametrize(("text", "encoding", "parts"), CASES)
def test_segments(text, encoding, parts):
    counted = sms.segments(text)
    assert (counted.encoding, counted.parts) == (encoding, parts)


@pytest.mark.parametrize(("sender", "kind"), [
    ("+13125550001", "long_code"), ("24680", "short_code"), ("123456", "short_code"), ("MyShop", "alphanumeric"),
    ("My Shop 2", "alphanumeric"), ("12345678901", None), ("TwelveChars1", None), ("+1-312", None), ("", None),
])
def test_sender_formats(sender, kind):
    assert sms.sender_kind(sender) == kind


def _by_phonenumbers(value: str) -> bool:
    import phonenumbers

    try:
        parsed = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_possible_number(parsed) and \
        phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) == value


@settings(max_examples=2000, deadline=None)
@given(st.from_regex(r"\A\+1[0-9]{10}\Z") | st.from_regex(r"\A\+[0-9]{1,16}\s?\Z") | st.text(max_size=20))
def test_is_e164_agrees_with_phonenumbers_and_its_shortcut_is_exact(value):
    # The NANP shortcut in sms.e164 skips the parse: it must never disagree with it.
    assert sms.is_e164(value) == (sms.E164.match(value) is not None and _by_phonenumbers(value))
