"""Size-capped dicts for per-process caches and queues, so memory stays flat forever.

A server process sees an endless stream of new digests, repositories, tenants, tokens
and header values; any dict keyed by them must forget something, or RSS grows until
the process dies (issue 14's soak found such growth). :class:`BoundedDict` is a dict
that drops its oldest entries beyond ``max_entries`` (oldest by write, or by use with
``lru=True``), and can drop expired entries from its front in O(expired) when entries
are written in expiry order (one TTL for all). Everything cached here must be safe to
lose: a dropped entry costs one more storage read, or, for a queue of background work,
is found again by the catch-up walk. This module holds no policy about what to cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedDict(OrderedDict[K, V]):
    """A dict of at most ``max_entries`` entries; writing one more drops the oldest.

    A write moves its key to the newest end; with ``lru=True`` a read does too (an LRU
    cache), otherwise the order is that of writes (a FIFO, cheaper to read).
    """

    def __init__(self, max_entries: int, *, lru: bool = False) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        super().__init__()
        self.max_entries = max_entries
        self.lru = lru

    def __setitem__(self, key: K, value: V) -> None:
        if key in self:
            self.move_to_end(key)
        super().__setitem__(key, value)
        while len(self) > self.max_entries:
            self.popitem(last=False)

    def __getitem__(self, key: K) -> V:
        value = super().__getitem__(key)
        if self.lru:
            self.move_to_end(key)
        return value

    def get(self, key: K, default: V | None = None) -> V | None:  # type: ignore[override]
        try:
            return self[key]
        except KeyError:
            return default

    def drop_expired(self, expired: Callable[[V], bool]) -> int:
        """Drop entries from the oldest end while *expired* says so; how many went.

        Exact when entries are written in expiry order (one TTL for all); otherwise an
        entry that expires early waits behind a live one until the cap drops it.
        """
        dropped = 0
        while self:
            key = next(iter(self))
            if not expired(super().__getitem__(key)):
                break
            del self[key]
            dropped += 1
        return dropped
