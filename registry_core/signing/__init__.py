"""Key signing: per-registry keys (sealed at rest), cosign and simple signatures, verification.

``keys`` owns the keys, ``payloads`` the signed documents, ``cosign`` the
``.sig`` attachments, ``simple`` the extension API's signature store,
``openpgp`` the GnuPG calls, ``signer`` the feed listener and catch-up job,
``verify`` the check. Nothing here imports aiohttp or a driver.
"""

from __future__ import annotations

from .keys import KeyRecord, KeyStore, SigningKeyError
from .signer import JOB, Signer, SigningDefaults, SigningSettings, request_host
from .verify import PublicKey, VerifyReport, parse_public_key, published_keys, verify_image

__all__ = [
    "JOB",
    "KeyRecord",
    "KeyStore",
    "PublicKey",
    "Signer",
    "SigningDefaults",
    "SigningKeyError",
    "SigningSettings",
    "VerifyReport",
    "parse_public_key",
    "published_keys",
    "request_host",
    "verify_image",
]
