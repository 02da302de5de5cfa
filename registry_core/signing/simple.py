"""Simple-signing (OpenPGP) signatures of a manifest, as the registry extension API serves them.

containers/image reads ``GET /extensions/v2/NAME/signatures/DIGEST`` and
pushes with ``PUT`` on the same path; each entry has ``schemaVersion`` 2,
``name`` ``DIGEST@ID``, ``type`` ``atomic`` and the signature bytes
(``content``, base64 in JSON). One object per signature under the
repository's ``_signatures`` folder, with who made it (``cargohold`` and
which key and identity, or ``client``), so re-signing is idempotent without
re-verifying. Deleting a manifest deletes the folder. This module never signs
and never builds a path itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
from typing import Literal

import msgspec

from ..digest import Digest
from ..errors import RegistryError
from ..names import RepositoryName
from ..storage import layout
from ..storage.driver import PathNotFound, StorageDriver

MAX_SIGNATURE_SIZE = 64 * 1024
_ID = re.compile(r"^[a-f0-9]{1,64}$")


class SignatureInvalid(RegistryError):
    code, status, default_message = "MANIFEST_INVALID", 400, "signature invalid"


class StoredSignature(msgspec.Struct, kw_only=True, omit_defaults=True):
    content: str
    """The OpenPGP signed message, base64."""
    signer: Literal["cargohold", "client"]
    key: str | None = None
    identity: str | None = None


class ExtensionSignature(msgspec.Struct, kw_only=True):
    """One entry of the extension API, as containers/image reads and writes it."""

    schemaVersion: int
    name: str
    type: str
    content: str


class ExtensionSignatureList(msgspec.Struct, kw_only=True):
    signatures: list[ExtensionSignature]


class SimpleSignatures:
    """The simple signatures of the manifests of one repository."""

    def __init__(self, driver: StorageDriver, name: RepositoryName) -> None:
        self.driver = driver
        self.name = name

    async def records(self, digest: Digest) -> list[tuple[str, StoredSignature]]:
        """``(id, record)`` of every stored signature of *digest*, by id."""
        directory = layout.simple_signatures_dir(self.name, digest)
        try:
            ids = sorted(await self.driver.list(directory))
        except PathNotFound:
            return []

        async def one(signature_id: str) -> StoredSignature | None:
            try:
                raw = await self.driver.read(
                    layout.simple_signature(self.name, digest, signature_id)
                )
                return msgspec.json.decode(raw, type=StoredSignature)
            except (PathNotFound, msgspec.DecodeError, msgspec.ValidationError):
                return None

        found = await asyncio.gather(*(one(i) for i in ids))
        return [(i, r) for i, r in zip(ids, found, strict=True) if r is not None]

    async def listing(self, digest: Digest) -> ExtensionSignatureList:
        """The extension API's answer: ``{"signatures": [...]}``, empty when there are none."""
        return ExtensionSignatureList(
            signatures=[
                ExtensionSignature(
                    schemaVersion=2, name=f"{digest}@{i}", type="atomic", content=r.content
                )
                for i, r in await self.records(digest)
            ]
        )

    async def add(self, digest: Digest, signature: bytes, record: StoredSignature) -> str:
        """Store one signature; its id is derived from its bytes, so a re-push is a no-op."""
        signature_id = hashlib.sha256(signature).hexdigest()[:32]
        await self.driver.write(
            layout.simple_signature(self.name, digest, signature_id), msgspec.json.encode(record)
        )
        return signature_id

    async def add_ours(self, digest: Digest, signature: bytes, key: str, identity: str) -> str:
        record = StoredSignature(
            content=base64.b64encode(signature).decode(),
            signer="cargohold",
            key=key,
            identity=identity,
        )
        return await self.add(digest, signature, record)

    async def add_from_client(self, digest: Digest, body: bytes) -> str:
        """A ``PUT`` body from a client (one extension entry); checked, then stored."""
        if len(body) > MAX_SIGNATURE_SIZE * 2:
            raise SignatureInvalid("signature too large")
        try:
            entry = msgspec.json.decode(body, type=ExtensionSignature)
            content = base64.b64decode(entry.content, validate=True)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
            raise SignatureInvalid(
                "expected one signature: schemaVersion, name, type, content"
            ) from None
        prefix, _, signature_id = entry.name.partition("@")
        if entry.schemaVersion != 2 or entry.type != "atomic":
            raise SignatureInvalid("only schemaVersion 2 atomic signatures are stored")
        if prefix != str(digest) or not _ID.fullmatch(signature_id):
            raise SignatureInvalid(f"the signature name must be {digest}@ID (ID: hex)")
        if not content or len(content) > MAX_SIGNATURE_SIZE:
            raise SignatureInvalid("the signature must be 1 byte to 64 KiB")
        record = StoredSignature(content=entry.content, signer="client")
        return await self.add(digest, content, record)

    async def delete_all(self, digest: Digest) -> None:
        with contextlib.suppress(PathNotFound):
            await self.driver.delete(layout.simple_signatures_dir(self.name, digest))
