"""Counts by severity for the tag rows of an image page, cached per process for a few seconds.

A tag row shows how many findings of each severity its manifest has, as the API's tag
listing does (``scanning_api.tag_counts``: one read of the digest's scan report). A page
has at most 50 rows; their reads go out together, and each answer (a manifest not scanned
too) is kept for *ttl* seconds per digest, so paging and reloading do not read them again.
A re-match after a database update shows within *ttl*. Per process, bounded, never written.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from registry_core.digest import Digest
from registry_core.scanning import ScanService

from ..http.scanning_api import tag_counts

Counts = dict[str, int] | None


class SeverityCounts:
    def __init__(self, service: ScanService, ttl: float = 10.0, max_entries: int = 4096) -> None:
        self.service = service
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, Counts]] = OrderedDict()

    async def many(self, digests: list[str]) -> dict[str, Counts]:
        """Counts by severity per digest (None: not scanned, or not an image)."""
        now = time.monotonic()
        found: dict[str, Counts] = {}
        missing = []
        for digest in dict.fromkeys(digests):
            entry = self._entries.get(digest)
            if entry is not None and entry[0] > now:
                found[digest] = entry[1]
            else:
                missing.append(digest)
        answers = await asyncio.gather(
            *(tag_counts(self.service, Digest.parse(d)) for d in missing)
        )
        for digest, counts in zip(missing, answers, strict=True):
            found[digest] = counts
            self._entries[digest] = (now + self.ttl, counts)
            self._entries.move_to_end(digest)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return found
