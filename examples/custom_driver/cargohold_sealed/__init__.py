"""``sealed://``: any Cargohold storage driver, with every object encrypted at rest.

An example of a third-party storage driver. It wraps another driver (named by
URL in the ``inner`` option) and encrypts each object with AES-256 in CTR mode
under a key from the configuration::

    [storage]
    url = "sealed://"

    [storage.options]
    inner = "s3://my-bucket/registry"          # any driver URL, even another plug-in
    inner_options = { endpoint_url = "..." }   # that driver's own options
    key = "<64 hex digits>"                    # 32 random bytes, e.g. `openssl rand -hex 32`

Stored object layout: ``b"CHS1"`` + a random 16-byte initial counter block + the
ciphertext. CTR mode is what makes the driver contract cheap to keep: byte *n*
of the plaintext is byte *n* of the ciphertext XOR keystream block *n // 16*,
so a read from any offset fetches only that range (plus the 20-byte header), an
append continues the keystream where the object ends, and a move keeps the
object valid because the counter block travels inside it. Sizes are the inner
sizes minus the header.

What it does not do: authenticate. CTR without a MAC cannot tell a tampered
object from a genuine one; a registry verifies blob digests on upload, and
clients verify them on pull, but small objects (links, tags) are trusted as
read. A production driver would add a MAC per object or per chunk. It also
never redirects (a signed URL would hand out ciphertext) and has no local
files for sendfile.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from registry_core.storage.driver import (
    DriverSettings,
    FileInfo,
    FileWriter,
    PathNotFound,
    StorageDriver,
    StorageError,
    WalkFilter,
)

__all__ = ["HEADER_SIZE", "SealedDriver", "open_sealed"]

MAGIC = b"CHS1"
BLOCK = 16
HEADER_SIZE = len(MAGIC) + BLOCK


class _Keystream:
    """AES-CTR positioned at a byte offset of the plaintext."""

    def __init__(self, key: bytes, counter: bytes, offset: int) -> None:
        start = (int.from_bytes(counter, "big") + offset // BLOCK) % (1 << 128)
        self._cipher = Cipher(algorithms.AES(key), modes.CTR(start.to_bytes(BLOCK, "big")))
        self._context = self._cipher.encryptor()
        self._context.update(bytes(offset % BLOCK))  # skip into the first block

    def apply(self, data: bytes) -> bytes:
        return self._context.update(data)


class SealedWriter:
    """Encrypts on the way into the inner driver's writer."""

    def __init__(self, inner: FileWriter, keystream: _Keystream) -> None:
        self._inner = inner
        self._keystream = keystream

    @property
    def size(self) -> int:
        return self._inner.size - HEADER_SIZE

    async def write(self, data: bytes) -> None:
        await self._inner.write(self._keystream.apply(data))

    async def commit(self) -> None:
        await self._inner.commit()

    async def cancel(self) -> None:
        await self._inner.cancel()


class SealedDriver:
    """A StorageDriver that encrypts everything it hands to another one."""

    name = "sealed"
    redirect_default = False

    def __init__(self, inner: StorageDriver, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the sealed driver needs a 32-byte key (64 hex digits)")
        self.inner = inner
        self._key = key

    # -- the format --------------------------------------------------------------------

    def _seal(self, data: bytes) -> bytes:
        counter = os.urandom(BLOCK)
        return MAGIC + counter + _Keystream(self._key, counter, 0).apply(data)

    def _counter(self, header: bytes, path: str) -> bytes:
        if len(header) != HEADER_SIZE or not header.startswith(MAGIC):
            raise StorageError(f"{path} is not a sealed object")
        return header[len(MAGIC) :]

    def _unseal(self, stored: bytes, path: str) -> bytes:
        counter = self._counter(stored[:HEADER_SIZE], path)
        return _Keystream(self._key, counter, 0).apply(stored[HEADER_SIZE:])

    async def _read_counter(self, path: str) -> bytes:
        header = b"".join([c async for c in self.inner.read_stream(path, 0, HEADER_SIZE)])
        return self._counter(header, path)

    # -- the StorageDriver protocol ------------------------------------------------------------

    async def read(self, path: str) -> bytes:
        return self._unseal(await self.inner.read(path), path)

    async def write(self, path: str, data: bytes) -> None:
        await self.inner.write(path, self._seal(data))

    async def write_if_absent(self, path: str, data: bytes) -> bool:
        return await self.inner.write_if_absent(path, self._seal(data))

    async def read_stream(
        self, path: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        keystream = _Keystream(self._key, await self._read_counter(path), offset)
        async for chunk in self.inner.read_stream(path, HEADER_SIZE + offset, length):
            yield keystream.apply(chunk)

    async def open_writer(self, path: str, *, append: bool = False) -> FileWriter:
        if append:
            try:
                stored = (await self.inner.stat(path)).size
            except PathNotFound:
                stored = None
            if stored is not None:
                counter = await self._read_counter(path)
                writer = await self.inner.open_writer(path, append=True)
                return SealedWriter(writer, _Keystream(self._key, counter, stored - HEADER_SIZE))
        counter = os.urandom(BLOCK)
        writer = await self.inner.open_writer(path, append=append)
        await writer.write(MAGIC + counter)
        return SealedWriter(writer, _Keystream(self._key, counter, 0))

    async def stat(self, path: str) -> FileInfo:
        return _plain_size(await self.inner.stat(path))

    async def list(self, path: str) -> list[str]:
        return await self.inner.list(path)

    async def walk(self, path: str, prune: WalkFilter | None = None) -> AsyncIterator[FileInfo]:
        async for entry in self.inner.walk(path, prune):
            yield _plain_size(entry)

    async def move(self, source: str, destination: str) -> None:
        await self.inner.move(source, destination)

    async def delete(self, path: str) -> None:
        await self.inner.delete(path)

    def local_path(self, path: str) -> str | None:
        return None  # the file on disk is ciphertext

    async def signed_url(self, path: str, expires: int) -> str | None:
        return None  # so is what a signed URL would serve

    async def close(self) -> None:
        await self.inner.close()


def _plain_size(info: FileInfo) -> FileInfo:
    if info.is_dir:
        return info
    return FileInfo(info.path, max(info.size - HEADER_SIZE, 0), info.mtime, False)


def open_sealed(
    url: str,
    *,
    key: str,
    inner: str,
    inner_options: dict[str, Any] | None = None,
    settings: DriverSettings | None = None,
) -> SealedDriver:
    """The ``cargohold.drivers`` entry point: ``sealed://`` with ``key`` and ``inner`` options."""
    from drivers import open_driver

    if not url.startswith("sealed://"):
        raise ValueError(f"not a sealed:// storage URL: {url!r}")
    try:
        secret = bytes.fromhex(key)
    except ValueError:
        raise ValueError("the sealed driver's key must be 64 hex digits") from None
    return SealedDriver(open_driver(inner, settings=settings, **(inner_options or {})), secret)
