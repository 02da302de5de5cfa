"""Content digests: the value type, parsing, and streaming hashers.

A digest is ``algorithm:hex``. Only algorithms the OCI image spec registers
(sha256, sha512) are accepted; anything else is DIGEST_INVALID at the edge,
so no other module needs to re-check a Digest it is handed.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

import attrs

from .errors import DigestInvalid

ALGORITHMS: Final[dict[str, int]] = {"sha256": 64, "sha512": 128}
DEFAULT_ALGORITHM: Final = "sha256"
_HEX = re.compile(r"^[a-f0-9]+$")


@attrs.frozen(order=True)
class Digest:
    """A validated content digest such as ``sha256:abc...``."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse and validate; raise DigestInvalid with the reason."""
        algorithm, sep, hexpart = text.partition(":")
        if not sep:
            raise DigestInvalid(f"invalid digest {text[:80]!r}: missing algorithm")
        length = ALGORITHMS.get(algorithm)
        if length is None:
            raise DigestInvalid(f"unsupported digest algorithm {algorithm[:20]!r}")
        if len(hexpart) != length or not _HEX.fullmatch(hexpart):
            raise DigestInvalid(
                f"invalid digest {text[:160]!r}: expected {length} lowercase hex characters"
            )
        return cls(algorithm, hexpart)

    @classmethod
    def of(cls, data: bytes, algorithm: str = DEFAULT_ALGORITHM) -> Digest:
        """The digest of a small in-memory payload (manifests, configs)."""
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def is_digest(text: str) -> bool:
    """True when *text* looks like a digest (has an algorithm prefix)."""
    return ":" in text


class Hasher:
    """A streaming hasher that also counts bytes.

    ``update`` may be called from a worker thread: hashlib releases the GIL
    for large buffers, which is why callers hash off the event loop.
    """

    __slots__ = ("_hash", "algorithm", "size")

    def __init__(self, algorithm: str = DEFAULT_ALGORITHM) -> None:
        if algorithm not in ALGORITHMS:
            raise DigestInvalid(f"unsupported digest algorithm {algorithm!r}")
        self.algorithm = algorithm
        self._hash = hashlib.new(algorithm)
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        self._hash.update(data)
        self.size += len(data)

    def digest(self) -> Digest:
        return Digest(self.algorithm, self._hash.hexdigest())


def verify(data: bytes, expected: Digest) -> None:
    """Raise DigestInvalid unless *data* hashes to *expected*."""
    actual = Digest.of(data, expected.algorithm)
    if actual != expected:
        raise DigestInvalid(detail={"expected": str(expected), "actual": str(actual)})
