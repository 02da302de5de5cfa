"""Stream compressors and decompressors for layers and archives, deterministic by design.

Layers that arrive uncompressed are compressed here, and the output must be
the same bytes every time for the same input, Cargohold version and
compressor build: gzip is written by hand around raw deflate (no file name, no
timestamp, fixed XFL/OS bytes), and zstd runs single-threaded with fixed
parameters. Nothing in this module touches the event loop or storage; callers
run it in worker threads.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any, Final, Literal, Protocol

from .errors import ArchiveInvalid

Compression = Literal["none", "gzip", "zstd"]

GZIP_LEVEL: Final = 6
"""Deflate level for layers Cargohold compresses: part of what fixes their digests."""
ZSTD_LEVEL: Final = 3

# magic, CM=deflate, FLG=0 (no name, no comment, no extra), MTIME=0, XFL=0, OS=255 (unknown):
# the same header Go's compress/gzip writes, so nothing about this machine leaks in.
_GZIP_HEADER: Final = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_GZIP_MAGIC: Final = b"\x1f\x8b"
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_OTHER_MAGIC: Final = {b"\xfd7zXZ\x00": "xz", b"BZh": "bzip2", b"\x04\x22\x4d\x18": "lz4"}


def zstandard_module() -> Any:
    """The ``zstandard`` module, or a clear error naming the extra to install."""
    try:
        import zstandard
    except ImportError:
        raise ArchiveInvalid(
            "zstd needs the 'zstandard' package, which is not installed: "
            "pip install 'cargohold[zstd]'"
        ) from None
    return zstandard


def detect(head: bytes) -> Compression | str:
    """The compression the first bytes of a stream announce (``none`` for anything else)."""
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    for magic, name in _OTHER_MAGIC.items():
        if head.startswith(magic):
            return name
    return "none"


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


class GzipCompressor:
    """Deterministic gzip: one member, fixed header, raw deflate at :data:`GZIP_LEVEL`."""

    def __init__(self, level: int = GZIP_LEVEL) -> None:
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 8)
        self._crc = 0
        self._size = 0
        self._header_written = False

    def _header(self) -> bytes:
        if self._header_written:
            return b""
        self._header_written = True
        return _GZIP_HEADER

    def compress(self, data: bytes) -> bytes:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        return self._header() + self._deflate.compress(data)

    def flush(self) -> bytes:
        trailer = struct.pack("<II", self._crc, self._size & 0xFFFFFFFF)
        return self._header() + self._deflate.flush() + trailer


class _ZstdCompressor:
    def __init__(self, size: int | None) -> None:
        zstandard = zstandard_module()
        # threads=0: multi-threaded zstd output is not promised to be stable.
        compressor = zstandard.ZstdCompressor(
            level=ZSTD_LEVEL, write_checksum=True, write_content_size=size is not None, threads=0
        )
        self._obj = compressor.compressobj(size=-1 if size is None else size)

    def compress(self, data: bytes) -> bytes:
        return self._obj.compress(data)

    def flush(self) -> bytes:
        return self._obj.flush()


def compressor(kind: Compression, size: int | None = None) -> Compressor:
    """A compressor for *kind*; *size* (the input length, when known) goes into zstd frames."""
    if kind == "gzip":
        return GzipCompressor()
    if kind == "zstd":
        return _ZstdCompressor(size)
    return _Identity()


class Decompressor:
    """Streaming decompression that notices truncation and trailing garbage.

    ``feed`` returns the decompressed bytes of a chunk; ``finish`` raises when
    the stream ended inside a frame. Concatenated gzip members and zstd frames
    are read through, as Go's readers do.
    """

    def __init__(self, kind: Compression, what: str) -> None:
        self.kind = kind
        self.what = what
        self._new: Callable[[], Any]
        if kind == "gzip":
            self._new = lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)
            self._errors: tuple[type[BaseException], ...] = (zlib.error,)
        elif kind == "zstd":
            zstandard = zstandard_module()
            decompressor = zstandard.ZstdDecompressor()
            self._new = decompressor.decompressobj
            self._errors = (zstandard.ZstdError,)
        else:
            self._new = _Identity
            self._errors = ()
        self._obj: Any = self._new() if kind != "none" else None
        self._pending = False  # bytes fed to the current frame and not yet ended
        self._magic = _GZIP_MAGIC if kind == "gzip" else _ZSTD_MAGIC

    def feed(self, data: bytes) -> bytes:
        if self._obj is None:
            return data
        out = []
        try:
            while data:
                if self._obj.eof:
                    if not data.startswith(self._magic[: len(data)]):
                        raise ArchiveInvalid(
                            f"{self.what}: trailing data after the {self.kind} stream",
                            detail={"entry": self.what},
                        )
                    self._obj = self._new()
                self._pending = True
                out.append(self._obj.decompress(data))
                data = self._obj.unused_data if self._obj.eof else b""
        except self._errors as exc:
            raise ArchiveInvalid(
                f"{self.what}: not valid {self.kind} data ({exc})", detail={"entry": self.what}
            ) from None
        return b"".join(out)

    def finish(self) -> None:
        if self._obj is not None and self._pending and not self._obj.eof:
            raise ArchiveInvalid(
                f"{self.what}: the {self.kind} stream is truncated", detail={"entry": self.what}
            )
        if self._obj is not None and not self._pending:
            raise ArchiveInvalid(
                f"{self.what}: empty {self.kind} stream", detail={"entry": self.what}
            )


# -- layer media types ---------------------------------------------------------------------

DOCKER_LAYER: Final = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP: Final = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER_GZIP: Final = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_LAYER: Final = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP: Final = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD: Final = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_CONFIG: Final = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
IMAGE_CONFIGS: Final = frozenset({DOCKER_CONFIG, OCI_CONFIG})


def layer_compression(media_type: str) -> Compression | None:
    """How a layer of *media_type* is compressed; None when it is no filesystem tar."""
    if media_type.startswith("application/vnd.docker.image.rootfs."):
        if media_type.endswith(".tar.gzip"):
            return "gzip"
        if media_type.endswith(".tar.zstd"):
            return "zstd"
        return "none" if media_type.endswith(".tar") else None
    if media_type.startswith("application/vnd.oci.image.layer."):
        if media_type.endswith("+gzip"):
            return "gzip"
        if media_type.endswith("+zstd"):
            return "zstd"
        return "none" if media_type.endswith(".tar") else None
    return None


def layer_media_type(kind: Compression, docker: bool) -> str:
    """The media type of a layer compressed with *kind* in a Docker or an OCI manifest."""
    if docker:
        return DOCKER_LAYER_GZIP if kind == "gzip" else DOCKER_LAYER
    return {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}.get(kind, OCI_LAYER)
