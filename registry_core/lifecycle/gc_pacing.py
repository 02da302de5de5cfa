"""Which pacer a GC run gets: adaptive on an object store, fixed caps elsewhere.

An object store (or its emulator) is shared with the clients and answers everyone's
requests from one queue, so a run there follows the store's response time
(:class:`~.pacing.AdaptivePacer`). A local folder is not paced by latency: the disk
answers GC's and the clients' requests side by side (push/pull throughput during GC was
1.01 of without it, unpaced at 32 in flight; ``benchmarks/RESULTS.md``), and the
driver's own thread-pool queue would read as congestion and slow GC for nothing. In
memory nobody shares the store at all.
"""

from __future__ import annotations

from collections.abc import Callable

from ..storage import layout
from ..storage.driver import StorageDriver
from .gc import IN_PROCESS_DRIVERS, default_concurrency
from .pacing import AdaptivePacer, RequestPacer


def is_shared_store(driver: StorageDriver) -> bool:
    """True for a remote store (object stores): neither a local folder nor in memory."""
    return driver.local_path(layout.BLOBS) is None and driver.name not in IN_PROCESS_DRIVERS


def gc_pacer(
    driver: StorageDriver,
    rate: float | None = None,
    concurrency: int | None = None,
    *,
    adaptive: bool = True,
    clients_busy: Callable[[], bool] | None = None,
    on_change: Callable[[float | None], None] | None = None,
) -> RequestPacer:
    """The pacer of one run on *driver*: *rate* and *concurrency* are caps (None or 0: no
    rate cap, :func:`~.gc.default_concurrency`); adaptive on a shared store unless
    *adaptive* is False (``[gc] adaptive``, ``cargohold gc --no-adaptive``)."""
    concurrency = concurrency or default_concurrency(driver)
    if adaptive and is_shared_store(driver):
        return AdaptivePacer(rate, concurrency, clients_busy=clients_busy, on_change=on_change)
    return RequestPacer(rate, concurrency)


__all__ = ["gc_pacer", "is_shared_store"]
