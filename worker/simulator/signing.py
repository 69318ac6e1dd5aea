"""How the simulator signs its webhooks: Ed25519 over ``f"{telnyx-timestamp}|{raw body}"``, base64 in the
``telnyx-signature-ed25519`` header (Telnyx's webhook docs; every official SDK verifies exactly this).

The simulator's own signer, not sendq's (``worker.signature``): if sendq misread the format, a shared
implementation would sign and verify the same mistake and every test would pass.
"""

from __future__ import annotations

import base64
import hashlib

from nacl.signing import SigningKey

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"


class WebhookSigner:
    def __init__(self, key: SigningKey) -> None:
        self._key = key

    @classmethod
    def from_seed(cls, seed: str) -> WebhookSigner:
        """A key pair derived from any text, so a local simulator keeps one public key across runs."""
        return cls(SigningKey(hashlib.sha256(seed.encode()).digest()))

    @property
    def public_key(self) -> str:
        """Base64 of the raw 32-byte public key, as Mission Control shows it (``TELNYX_PUBLIC_KEY``)."""
        return base64.b64encode(bytes(self._key.verify_key)).decode()

    def headers(self, body: bytes, timestamp: int) -> dict[str, str]:
        signature = self._key.sign(f"{timestamp}|".encode() + body).signature
        return {SIGNATURE_HEADER: base64.b64encode(signature).decode(), TIMESTAMP_HEADER: str(timestamp)}
