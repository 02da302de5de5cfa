"""An in-process cache of immutable content, keyed by digest.

Content addressed by digest never changes, so caching it is always correct,
across processes and replicas alike; only its size is bounded. Mutable state
(tags, links) is never cached here.
"""

from __future__ import annotations

from collections import OrderedDict

from ..digest import Digest

DEFAULT_CACHE_BYTES = 64 * 1024 * 1024


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
        self._bytes += len(body)
        while self._bytes > self.max_bytes:
            _, (old, _) = self._items.popitem(last=False)
            self._bytes -= len(old)
        return item
