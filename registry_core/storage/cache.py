"""An in-process cache of immutable content, keyed by digest.

Content addressed by digest never changes, so caching it is always correct,
across processes and replicas alike; only its size is bounded. Mutable state
(tags, links) is never cached here.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from ..bounded import BoundedDict
from ..digest import Digest

DEFAULT_CACHE_BYTES = 2 * 1024 * 1024
"""About 2,000 typical manifests per process; every worker has its own. It was 8 MiB, which
under issue 14's soak was the largest thing still filling after minute 2 (a worker's RSS
+24% from minute 2 with it, +2% and +9% with the cache off; +15% with 8 MiB filled to its
cap beforehand, +7% and +12% with 2 MiB filled beforehand; on a machine at load 20). Raise
``manifests.cache_bytes`` for a worker that serves many distinct manifests by digest from
slow storage."""
ENTRY_OVERHEAD = 560
"""Bytes one entry costs beyond its body (digest object and its hex string, bytes header,
tuple, dict slot), counted so that the cap bounds the memory the cache really takes, even
for tiny manifests. Measured with tracemalloc: 526 bytes per entry (it was counted as 400,
so a cache of the soak's ~600-byte manifests held 2.37 MB under its 2 MiB cap)."""


class ContentCache:
    """LRU of small immutable payloads (manifests) with their media type."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Digest, tuple[bytes, str]] = OrderedDict()
        self._bytes = 0

    def get(self, digest: Digest) -> tuple[bytes, str] | None:
        item = self._items.get(digest)
        if item is not None:
            self._items.move_to_end(digest)
        return item

    def put(self, digest: Digest, body: bytes, media_type: str) -> tuple[bytes, str]:
        item = (body, media_type)
        if len(body) > self.max_bytes // 8 or digest in self._items:
            return item
        self._items[digest] = item
        self._bytes += len(body) + ENTRY_OVERHEAD
        while self._bytes > self.max_bytes:
            _, (old, _) = self._items.popitem(last=False)
            self._bytes -= len(old) + ENTRY_OVERHEAD
        return item


class LinkCache:
    """A short-lived cache of mutable links (tag -> digest, revision present), per process.

    Writes and deletes made through this process update it at once; changes
    made by other processes sharing the storage are seen within ``ttl``
    seconds. ``ttl = 0`` turns it off.
    """

    def __init__(self, ttl: float, max_entries: int = 100_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        # One TTL for all: write order is expiry order, so expired entries leave from the
        # front as new ones come (a stream of new digests must not pile up until the cap).
        self._entries: BoundedDict[tuple[str, str], tuple[float, Digest]] = BoundedDict(max_entries)
        self.generation = 0
        """Bumped by every manifest write or delete in this process (catalog freshness)."""
        self._catalog: tuple[float, int, list[str]] | None = None

    def get(self, repository: str, key: str) -> Digest | None:
        if self.ttl <= 0:
            return None
        entry = self._entries.get((repository, key))
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            self._entries.pop((repository, key), None)
            return None
        return entry[1]

    def put(self, repository: str, key: str, digest: Digest) -> None:
        if self.ttl <= 0:
            return
        now = time.monotonic()
        self._entries[(repository, key)] = (now + self.ttl, digest)
        self._entries.drop_expired(lambda entry: entry[0] < now)

    def catalog(self) -> list[str] | None:
        """The cached repository list, if fresh and nothing was written since."""
        entry = self._catalog
        if self.ttl <= 0 or entry is None:
            return None
        expires, generation, names = entry
        if generation != self.generation or expires < time.monotonic():
            return None
        return names

    def put_catalog(self, names: list[str], generation: int) -> None:
        if self.ttl > 0:
            self._catalog = (time.monotonic() + self.ttl, generation, names)

    def forget_repository(self, repository: str) -> None:
        for entry in [k for k in self._entries if k[0] == repository]:
            del self._entries[entry]
