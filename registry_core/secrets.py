"""Secrets at rest: values that must be used again (upstream passwords, signing keys), sealed.

One key-encryption key per deployment (``[secrets] key`` / ``CARGOHOLD_SECRETS_KEY``,
else a file generated into ``state_dir``) seals each secret with AES-256-GCM from
``cryptography``; the caller names what the secret belongs to (``context``), which
is bound as associated data so a sealed value copied onto another record does not
open. The first key to seal a secret into a bucket leaves a small canary sealed
with it; a process whose key cannot open the canary must refuse to start. This
module never logs or returns a key or a plaintext anywhere but to its caller, and
never stores a plaintext.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .storage import layout
from .storage.driver import PathNotFound, StorageDriver

KEY_FILE = "secrets-key"
MIN_KEY_LENGTH = 16
_PREFIX = "v1:"
_CANARY = b"cargohold secrets canary"
_CANARY_CONTEXT = "canary"


class SecretsError(Exception):
    """A sealed value does not open with this key, or the key itself is unusable."""


class KeyMismatch(SecretsError):
    """This process's key is not the one the bucket's secrets were sealed with."""


class SecretBox:
    """Seal and open short secrets with one key-encryption key."""

    def __init__(self, key_text: str) -> None:
        key_text = key_text.strip()
        if len(key_text) < MIN_KEY_LENGTH:
            raise SecretsError(f"the secrets key must have at least {MIN_KEY_LENGTH} characters")
        # HKDF turns any sufficiently long operator-chosen text into an AES key.
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"cargohold secrets v1"
        ).derive(key_text.encode())
        self._aead = AESGCM(derived)

    def seal(self, plaintext: str, context: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), context.encode())
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, sealed: str, context: str) -> str:
        if not sealed.startswith(_PREFIX):
            raise SecretsError("not a sealed secret")
        try:
            raw = base64.urlsafe_b64decode(sealed[len(_PREFIX) :].encode())
            return self._aead.decrypt(raw[:12], raw[12:], context.encode()).decode()
        except (InvalidTag, ValueError):
            raise SecretsError("the sealed secret does not open with this key") from None

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"


def generate_key() -> str:
    return secrets.token_urlsafe(32)


def key_from_state_dir(directory: Path) -> str:
    """The key kept in *directory* (mode 0600), created there on first use.

    Created exclusively, so processes starting together agree on one key.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / KEY_FILE
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(descriptor, "w") as handle:
        handle.write(generate_key() + "\n")
    os.chmod(path, 0o600)
    return path.read_text().strip()


async def check_canary(driver: StorageDriver, box: SecretBox, *, create: bool = False) -> None:
    """Raise KeyMismatch when storage holds a canary that *box* cannot open.

    ``create``: leave a canary sealed with *box* first if there is none (done
    when the first secret is sealed, so storage that holds no secret binds no key).
    """
    path = layout.secrets_canary()
    if create:
        await driver.write_if_absent(path, box.seal(_CANARY.decode(), _CANARY_CONTEXT).encode())
    try:
        stored = (await driver.read(path)).decode()
    except PathNotFound:  # no secret stored yet: any key will do
        return
    try:
        opened = box.open(stored, _CANARY_CONTEXT)
    except SecretsError:
        opened = None
    if opened != _CANARY.decode():
        raise KeyMismatch(KEY_MISMATCH)


KEY_MISMATCH = (
    "this storage's secrets were sealed with another key: give this process the same "
    "[secrets] key (or CARGOHOLD_SECRETS_KEY) as the other servers"
)
