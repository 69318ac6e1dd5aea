"""Telnyx webhook signatures: Ed25519 over ``f"{telnyx-timestamp}|{raw body}"``.

The same rules as Telnyx's own SDKs: base64 (standard, padded) 32-byte public keys and 64-byte
signatures, an integer timestamp, and a symmetric tolerance of 300 s. Several public keys may be
configured at once so a key can be rotated; any one verifying is enough.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from worker.errors import ConfigurationError, SignatureError, StaleTimestamp

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
DEFAULT_TOLERANCE_S = 300


def _b64(value: str, size: int, what: str) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"{what} is not valid base64") from exc
    if len(raw) != size:
        raise SignatureError(f"{what} must be {size} bytes, got {len(raw)}")
    return raw


def load_keys(encoded: Sequence[str]) -> list[VerifyKey]:
    """Public keys from their base64 form; a malformed one is a configuration error."""
    try:
        return [VerifyKey(_b64(k, 32, "public key")) for k in encoded]
    except SignatureError as exc:
        raise ConfigurationError(f"TELNYX_PUBLIC_KEY: {exc}") from None


def verify(body: bytes, signature: str | None, timestamp: str | None, keys: Sequence[VerifyKey], *,
           now: float, tolerance_s: int = DEFAULT_TOLERANCE_S) -> None:
    """Raise :class:`SignatureError` unless one of ``keys`` signed ``body`` at a fresh ``timestamp``."""
    if not keys:
        raise SignatureError("no public key configured (TELNYX_PUBLIC_KEY)")
    if not signature or not timestamp:
        raise SignatureError("missing signature or timestamp header")
    if not timestamp.isascii() or not timestamp.isdigit():
        raise SignatureError("timestamp is not an integer")
    # Over 18 digits is centuries away, and int() refuses over 4300 digits, float() over ~309.
    if len(timestamp.lstrip("0")) > 18 or abs(now - int(timestamp)) > tolerance_s:
        raise StaleTimestamp(f"timestamp {timestamp} is more than {tolerance_s} s from now")
    raw_signature = _b64(signature, 64, "signature")
    signed = timestamp.encode() + b"|" + body
    for key in keys:
        try:
            key.verify(signed, raw_signature)
            return
        except BadSignatureError:
            continue
    raise SignatureError("signature does not verify")


class Signer:
    """The sending side, for the simulator: signs bodies the way Telnyx does."""

    def __init__(self, signing_key: SigningKey) -> None:
        self._key = signing_key

    @classmethod
    def from_seed(cls, seed: str) -> Signer:
        """A deterministic key pair from any text, so a local simulator keeps one public key across runs."""
        return cls(SigningKey(hashlib.sha256(seed.encode()).digest()))

    @property
    def public_key(self) -> str:
        return base64.b64encode(bytes(self._key.verify_key)).decode()

    def headers(self, body: bytes, timestamp: int) -> dict[str, str]:
        signed = self._key.sign(str(timestamp).encode() + b"|" + body).signature
        return {SIGNATURE_HEADER: base64.b64encode(signed).decode(), TIMESTAMP_HEADER: str(timestamp)}
