"""Webhook signatures: sendq's verifier agrees with the official telnyx SDK's."""

from __future__ import annotations

import time

import pytest
import telnyx

from worker.errors import ConfigurationError, SignatureError, StaleTimestamp
from worker.signature import Signer, load_keys, verify

BODY = b'{"data":{"event_type":"message.sent","id":"e1","payload":{"id":"m1"}}}'
SIGNER = Signer.from_seed("tests")
OTHER = Signer.from_seed("someone else")


def sdk_accepts(body: bytes, headers: dict[str, str], key: str) -> bool:
    client = telnyx.Telnyx(api_key="KEY-test", base_url="http://127.0.0.1:9/v2", max_retries=0)
    try:
        client.webhooks.unwrap(body.decode(), headers=headers, key=key)
        return True
    except ValueError:
        return False
    finally:
        client.close()


def sendq_accepts(body: bytes, headers: dict[str, str], keys: list[str]) -> bool:
    try:
        verify(body, headers.get("telnyx-signature-ed25519"), headers.get("telnyx-timestamp"), load_keys(keys),
               now=time.time())
        return True
    except SignatureError:
        return False


CASES = {
    "valid": lambda now: (BODY, SIGNER.headers(BODY, now)),
    "tampered body": lambda now: (BODY + b" ", SIGNER.headers(BODY, now)),
    "wrong key": lambda now: (BODY, OTHER.headers(BODY, now)),
    "stale by 301 s": lambda now: (BODY, SIGNER.headers(BODY, now - 301)),
    "ahead by 310 s": lambda now: (BODY, SIGNER.headers(BODY, now + 310)),
    "290 s old": lambda now: (BODY, SIGNER.headers(BODY, now - 290)),
    "timestamp swapped": lambda now: (BODY, {**SIGNER.headers(BODY, now - 10),
                                             "telnyx-timestamp": str(now)}),
    "signature not base64": lambda now: (BODY, {**SIGNER.headers(BODY, now),
                                                "telnyx-signature-ed25519": "not base64!!"}),
    "signature too short": lambda now: (BODY, {**SIGNER.headers(BODY, now),
                                               "telnyx-signature-ed25519": "c2hvcnQ="}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sendq_accepts_exactly_what_the_official_sdk_accepts(case):
    body, headers = CASES[case](int(time.time()))
    expected = case in ("valid", "290 s old")

    assert sdk_accepts(body, headers, SIGNER.public_key) is expected
    assert sendq_accepts(body, headers, [SIGNER.public_key]) is expected


def test_any_one_of_several_keys_verifying_is_enough():
    headers = SIGNER.headers(BODY, int(time.time()))

    assert sendq_accepts(BODY, headers, [OTHER.public_key, SIGNER.public_key])
    assert not sendq_accepts(BODY, headers, [OTHER.public_key])


def test_a_stale_timestamp_is_told_apart_from_a_bad_signature():
    now = int(time.time())
    with pytest.raises(StaleTimestamp):
        verify(BODY, *SIGNER.headers(BODY, now - 400).values(), load_keys([SIGNER.public_key]), now=now)


def test_missing_headers_and_missing_keys_are_refused():
    headers = SIGNER.headers(BODY, int(time.time()))
    with pytest.raises(SignatureError):
        verify(BODY, None, headers["telnyx-timestamp"], load_keys([SIGNER.public_key]), now=time.time())
    with pytest.raises(SignatureError):
        verify(BODY, headers["telnyx-signature-ed25519"], headers["telnyx-timestamp"], [], now=time.time())


def test_a_malformed_public_key_is_a_configuration_error():
    with pytest.raises(ConfigurationError):
        load_keys(["not-a-key"])
