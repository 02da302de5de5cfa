"""Per-registry signing keys: made on first use, rotated, imported; private halves sealed.

Each ``OWNER/REGISTRY`` has keys of two kinds: ``cosign`` (ECDSA P-256, for
sigstore signatures) and ``gpg`` (RSA OpenPGP, for simple signing). A key is
one record ``<kind>-<seq>`` in storage (``layout.signing_key_record``);
the newest active record of a kind signs, older ones stay published as
``retired`` so signatures they made keep verifying. Records are created
with create-if-absent, so racing processes agree on one key without a lock.
The private half is stored only sealed with the key-encryption key
(``registry_core.secrets``, the record's path as context); a retired key
drops it. This module never stores or logs a private key in clear; opened
keys are cached per process by key id (a key id's key never changes).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
import weakref
from typing import Literal

import attrs
import msgspec
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..bounded import BoundedDict
from ..errors import RegistryError
from ..names import Tenant
from ..secrets import SecretBox, check_canary
from ..storage import layout
from ..storage.driver import PathNotFound, StorageDriver
from . import openpgp

KeyKind = Literal["cosign", "gpg"]
MAX_KEYS_CACHED = 4096
"""Registries whose signing key one process keeps (the record and the opened key)."""
KINDS: tuple[KeyKind, ...] = ("cosign", "gpg")


class SigningKeyError(RegistryError):
    """A key cannot be made, imported or opened (no secrets key, a bad import)."""

    code, status, default_message = "UNSUPPORTED", 400, "signing key problem"


class KeyRecord(msgspec.Struct, kw_only=True):
    """One signing key as stored; ``sealed`` is the private half, sealed (empty once retired)."""

    id: str
    kind: KeyKind
    algorithm: str
    fingerprint: str
    public: str
    status: Literal["active", "retired"] = "active"
    created: float
    retired: float | None = None
    imported: bool = False
    sealed: str = ""


@attrs.frozen
class SigningKey:
    """An opened key that can sign (its private part never leaves the process)."""

    record: KeyRecord
    cosign: ec.EllipticCurvePrivateKey | None = attrs.field(default=None, repr=False)
    gpg: openpgp.OpenPgpKey | None = attrs.field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.record.id


def cosign_fingerprint(public_pem: str) -> str:
    """SHA-256 of the DER public key, hex (how cosign users compare keys)."""
    key = serialization.load_pem_public_key(public_pem.encode())
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _cosign_pem(key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def _seq(key_id: str) -> int:
    return int(key_id.rsplit("-", 1)[1])


class KeyStore:
    """The signing keys of every registry on one storage."""

    def __init__(
        self,
        driver: StorageDriver,
        box: SecretBox | None,
        *,
        rsa_bits: int = 3072,
        ttl: float = 10.0,
    ) -> None:
        self.driver = driver
        self.box = box
        self.rsa_bits = rsa_bits
        # Which key signs, per process for ttl seconds (auth.cache_ttl): a rotation made
        # elsewhere is picked up within it, one made here at once.
        self.ttl = ttl
        # Bounded: a process serving many registries keeps the busiest ones' keys open.
        self._signing: BoundedDict[tuple[Tenant, str], tuple[float, KeyRecord]] = BoundedDict(
            MAX_KEYS_CACHED
        )
        self._opened: BoundedDict[tuple[Tenant, str], SigningKey] = BoundedDict(
            MAX_KEYS_CACHED, lru=True
        )
        self._making: weakref.WeakValueDictionary[tuple[Tenant, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def list(self, tenant: Tenant) -> list[KeyRecord]:
        """Every key of *tenant*, by kind then age."""
        try:
            names = await self.driver.list(layout.signing_keys_dir(tenant))
        except PathNotFound:
            return []
        records = []
        for name in sorted(names, key=lambda n: (n.rsplit("-", 1)[0], _seq(n))):
            record = await self._read(tenant, name)
            if record is not None:
                records.append(record)
        return records

    async def _read(self, tenant: Tenant, key_id: str) -> KeyRecord | None:
        try:
            raw = await self.driver.read(layout.signing_key_record(tenant, key_id))
            return msgspec.json.decode(raw, type=KeyRecord)
        except (PathNotFound, msgspec.DecodeError, msgspec.ValidationError):
            return None

    async def get(self, tenant: Tenant, key_id: str) -> KeyRecord | None:
        return await self._read(tenant, key_id)

    async def current(self, tenant: Tenant, kind: KeyKind) -> KeyRecord | None:
        """The newest active key of *kind*, or None."""
        active = [r for r in await self.list(tenant) if r.kind == kind and r.status == "active"]
        return active[-1] if active else None

    async def signing_key(
        self, tenant: Tenant, kind: KeyKind, *, rsa_bits: int | None = None
    ) -> SigningKey:
        """The key that signs for *tenant* now, made on first use (an RSA key of
        *rsa_bits*, the registry's setting; None: the server's)."""
        cached = self._signing.get((tenant, kind))
        if cached is not None and cached[0] > time.monotonic():
            return self._open(tenant, cached[1])
        lock = self._making.setdefault((tenant, kind), asyncio.Lock())
        async with lock:
            record = await self.current(tenant, kind)
            if record is None:
                record = await self._create(tenant, kind, rsa_bits=rsa_bits)
        self._signing[(tenant, kind)] = (time.monotonic() + self.ttl, record)
        return self._open(tenant, record)

    def _open(self, tenant: Tenant, record: KeyRecord) -> SigningKey:
        cached = self._opened.get((tenant, record.id))
        if cached is not None:
            return cached
        if not record.sealed:
            raise SigningKeyError(f"key {record.id} of {tenant} is retired: it no longer signs")
        private = self._box().open(record.sealed, self._context(tenant, record.id))
        if record.kind == "cosign":
            key = serialization.load_pem_private_key(private.encode(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            opened = SigningKey(record, cosign=key)
        else:
            opened = SigningKey(
                record, gpg=openpgp.OpenPgpKey(record.fingerprint, record.public, private)
            )
        self._opened[(tenant, record.id)] = opened
        return opened

    def _box(self) -> SecretBox:
        if self.box is None:
            raise SigningKeyError("signing needs the secrets key ([secrets] key)")
        return self.box

    @staticmethod
    def _context(tenant: Tenant, key_id: str) -> str:
        return layout.signing_key_record(tenant, key_id)

    async def _generate(
        self, tenant: Tenant, kind: KeyKind, rsa_bits: int | None = None
    ) -> tuple[str, str, str, str]:
        """(algorithm, fingerprint, public, private) of a new key."""
        if kind == "cosign":
            private, public = _cosign_pem(ec.generate_private_key(ec.SECP256R1()))
            return "ecdsa-p256", cosign_fingerprint(public), public, private
        uid = f"Cargohold {tenant} <signing@{tenant.owner}.{tenant.registry}.cargohold.invalid>"
        bits = rsa_bits or self.rsa_bits
        made = await asyncio.to_thread(openpgp.generate, uid, bits)
        return f"rsa{bits}", made.fingerprint, made.public, made.secret

    async def _create(
        self,
        tenant: Tenant,
        kind: KeyKind,
        material: tuple[str, str, str, str] | None = None,
        *,
        rsa_bits: int | None = None,
    ) -> KeyRecord:
        """Store a new key as the next of its kind; on a lost race, the winner's key."""
        box = self._box()
        # The first secret sealed on this storage leaves the canary, so that a process
        # holding another key refuses to start rather than seal keys nobody else can open.
        await check_canary(self.driver, box, create=True)
        algorithm, fingerprint, public, private = material or await self._generate(
            tenant, kind, rsa_bits
        )
        existing = [r for r in await self.list(tenant) if r.kind == kind]
        key_id = f"{kind}-{(_seq(existing[-1].id) if existing else 0) + 1}"
        record = KeyRecord(
            id=key_id,
            kind=kind,
            algorithm=algorithm,
            fingerprint=fingerprint,
            public=public,
            created=time.time(),
            imported=material is not None,
            sealed=box.seal(private, self._context(tenant, key_id)),
        )
        path = layout.signing_key_record(tenant, key_id)
        if not await self.driver.write_if_absent(path, msgspec.json.encode(record)):
            won = await self._read(tenant, key_id)
            if won is None:
                raise SigningKeyError(f"key {key_id} of {tenant} could not be stored")
            return won
        for older in existing:
            if older.status == "active":
                await self._retire(tenant, older)
        self._signing.pop((tenant, kind), None)
        return record

    async def _retire(self, tenant: Tenant, record: KeyRecord) -> None:
        retired = msgspec.structs.replace(record, status="retired", retired=time.time(), sealed="")
        await self.driver.write(
            layout.signing_key_record(tenant, record.id), msgspec.json.encode(retired)
        )
        self._opened.pop((tenant, record.id), None)

    async def rotate(
        self, tenant: Tenant, kind: KeyKind, *, rsa_bits: int | None = None
    ) -> KeyRecord:
        """A new key of *kind* signs from now on; the old one stays published, retired."""
        return await self._create(tenant, kind, rsa_bits=rsa_bits)

    async def import_key(self, tenant: Tenant, text: str) -> KeyRecord:
        """Import a PEM ECDSA P-256 private key (cosign) or an armored OpenPGP secret key."""
        if "BEGIN PGP PRIVATE KEY BLOCK" in text:
            try:
                key = await asyncio.to_thread(openpgp.inspect_secret, text)
            except openpgp.OpenPgpError as exc:
                raise SigningKeyError(str(exc)) from None
            return await self._create(
                tenant, "gpg", ("openpgp", key.fingerprint, key.public, key.secret)
            )
        try:
            loaded = serialization.load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError):
            raise SigningKeyError(
                "expected an unencrypted PEM private key (ECDSA P-256) or an armored "
                "OpenPGP secret key"
            ) from None
        if not isinstance(loaded, ec.EllipticCurvePrivateKey) or not isinstance(
            loaded.curve, ec.SECP256R1
        ):
            raise SigningKeyError("cosign keys must be ECDSA P-256")
        private, public = _cosign_pem(loaded)
        return await self._create(
            tenant, "cosign", ("ecdsa-p256", cosign_fingerprint(public), public, private)
        )

    async def delete_all(self, tenant: Tenant) -> None:
        with contextlib.suppress(PathNotFound):
            await self.driver.delete(layout.signing_keys_dir(tenant))


def sign_cosign(key: SigningKey, payload: bytes) -> str:
    """Base64 DER ECDSA P-256 signature over SHA-256 of *payload* (cosign's form)."""
    assert key.cosign is not None
    return base64.b64encode(key.cosign.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
