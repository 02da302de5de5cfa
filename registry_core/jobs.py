"""Background work across replicas without a database: numbered leases and a scheduler.

Storage offers create-if-absent but no compare-and-swap, so an exclusive job
(GC, retention, scrub, ...) is guarded by *numbered leases*: objects
``cargohold/jobs/<job>/lease/<epoch>`` holding the holder's id and expiry.
The first taker creates epoch 1 if absent; the holder renews by overwriting
its own epoch object (nobody else ever writes it); a taker creates epoch+1,
again only if absent, and only after reading that the current epoch has
expired. Exactly one of several racing takers wins that create. Before each
destructive batch the holder calls :meth:`LeaseGuard.check` (fencing): it
fails when a higher epoch exists or the lease has run out by the local clock,
so a holder that was paused past its expiry stops before it does harm. Batches
must stay short relative to the lease's time to live, and jobs must be
idempotent (at-least-once is all a lease gives). Expiry compares wall clocks
of different machines: keep their skew well below the time to live.

:class:`Scheduler` runs periodic jobs in every process that starts it (server
processes, ``cargohold worker``); only the lease holder works, the others find
the lease held and wait for the next tick. :meth:`Scheduler.nudge` asks for a
run soon, in this process, without a storage write. A *shared* job
(:meth:`Scheduler.add_shared`) runs in every process at once with no lease: for
work made of independent items that are claimed one by one in storage (scans
per manifest digest), so that many processes share the load.

This module never imports a driver or aiohttp, never builds paths itself
(layout does) and never keeps job state in memory across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs
import msgspec

from .storage import layout
from .storage.driver import PathNotFound, StorageDriver

log = logging.getLogger(__name__)

_JOB_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_KEEP_OLD_EPOCHS = 2


class LeaseBusy(Exception):
    """Another holder has the job's lease and it has not expired."""

    def __init__(self, job: str, holder: str, expires: float) -> None:
        super().__init__(f"job {job!r} is running elsewhere (holder {holder}) until {expires:.0f}")
        self.job = job
        self.holder = holder
        self.expires = expires


class LeaseLost(Exception):
    """The lease ran out or a newer epoch was taken: stop before the next destructive step."""


class _LeaseRecord(msgspec.Struct, kw_only=True):
    holder: str
    expires: float
    acquired: float


@attrs.define
class Lease:
    """One epoch of a job's lease, as this process holds it."""

    job: str
    epoch: int
    holder: str
    expires: float
    acquired: float


def default_holder_id() -> str:
    """A holder id unique to this process: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _check_job_name(job: str) -> str:
    if not _JOB_NAME.fullmatch(job):
        raise ValueError(f"invalid job name {job!r}")
    return job


class Leases:
    """Take, renew, fence and release numbered leases on one storage driver."""

    def __init__(
        self,
        driver: StorageDriver,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.driver = driver
        self.holder = holder or default_holder_id()
        self.clock = clock

    async def epochs(self, job: str) -> list[int]:
        """The lease epochs stored for *job*, ascending."""
        try:
            names = await self.driver.list(layout.job_lease_dir(_check_job_name(job)))
        except PathNotFound:
            return []
        return sorted(int(name) for name in names if name.isdigit())

    async def current(self, job: str) -> Lease | None:
        """The newest lease of *job* (expired or not), or None when it never ran."""
        for epoch in reversed(await self.epochs(job)):
            record = await self._read(job, epoch)
            if record is not None:
                return Lease(job, epoch, record.holder, record.expires, record.acquired)
        return None

    async def _read(self, job: str, epoch: int) -> _LeaseRecord | None:
        try:
            body = await self.driver.read(layout.job_lease(job, epoch))
        except PathNotFound:
            return None
        try:
            return msgspec.json.decode(body, type=_LeaseRecord)
        except (msgspec.DecodeError, msgspec.ValidationError):
            # A torn or foreign object cannot prove it is alive: treat it as expired.
            return _LeaseRecord(holder="?", expires=0.0, acquired=0.0)

    async def acquire(self, job: str, ttl: float) -> Lease:
        """Take *job*'s lease for *ttl* seconds; raise LeaseBusy when someone holds it."""
        _check_job_name(job)
        epochs = await self.epochs(job)
        latest = epochs[-1] if epochs else 0
        if latest:
            record = await self._read(job, latest)
            now = self.clock()
            if record is not None and record.expires > now:
                raise LeaseBusy(job, record.holder, record.expires)
        now = self.clock()
        lease = Lease(job, latest + 1, self.holder, now + ttl, now)
        created = await self.driver.write_if_absent(
            layout.job_lease(job, lease.epoch), self._encode(lease)
        )
        if not created:
            current = await self.current(job)
            raise LeaseBusy(
                job,
                current.holder if current else "?",
                current.expires if current else 0.0,
            )
        # A taker that read an epoch long ago may have re-created a pruned lower
        # one; it must see the newer epoch here and step back.
        if (await self.epochs(job))[-1] != lease.epoch:
            raise LeaseBusy(job, "?", 0.0)
        for old in epochs[:-_KEEP_OLD_EPOCHS]:
            with contextlib.suppress(PathNotFound):
                await self.driver.delete(layout.job_lease(job, old))
        return lease

    async def check(self, lease: Lease) -> None:
        """Fencing: raise LeaseLost unless *lease* is unexpired and still the newest epoch."""
        if self.clock() >= lease.expires:
            raise LeaseLost(f"lease of {lease.job!r} epoch {lease.epoch} expired")
        epochs = await self.epochs(lease.job)
        if not epochs or epochs[-1] != lease.epoch:
            raise LeaseLost(f"lease of {lease.job!r} epoch {lease.epoch} was taken over")

    async def renew(self, lease: Lease, ttl: float) -> None:
        """Extend *lease* by overwriting its own epoch object (after a fencing check)."""
        await self.check(lease)
        lease.expires = self.clock() + ttl
        await self.driver.write(layout.job_lease(lease.job, lease.epoch), self._encode(lease))

    async def release(self, lease: Lease) -> None:
        """Mark *lease* expired so the next taker need not wait for its time to live."""
        lease.expires = 0.0
        with contextlib.suppress(PathNotFound):
            epochs = await self.epochs(lease.job)
            if epochs and epochs[-1] == lease.epoch:
                await self.driver.write(
                    layout.job_lease(lease.job, lease.epoch), self._encode(lease)
                )

    @contextlib.asynccontextmanager
    async def hold(self, job: str, ttl: float) -> AsyncIterator[LeaseGuard]:
        """Hold *job*'s lease for a block, renewed in the background; LeaseBusy if taken."""
        lease = await self.acquire(job, ttl)
        guard = LeaseGuard(self, lease, ttl)
        renewer = asyncio.create_task(guard._renew_forever())
        try:
            yield guard
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            if not guard.lost:
                await self.release(lease)

    @staticmethod
    def _encode(lease: Lease) -> bytes:
        return msgspec.json.encode(
            _LeaseRecord(holder=lease.holder, expires=lease.expires, acquired=lease.acquired)
        )


class LeaseGuard:
    """A held lease that renews itself; work calls :meth:`check` before each destructive batch."""

    def __init__(self, leases: Leases, lease: Lease, ttl: float) -> None:
        self.leases = leases
        self.lease = lease
        self.ttl = ttl
        self.lost: LeaseLost | None = None

    async def check(self) -> None:
        """Raise LeaseLost when the lease is no longer ours (see :meth:`Leases.check`)."""
        if self.lost is not None:
            raise self.lost
        try:
            await self.leases.check(self.lease)
        except LeaseLost as exc:
            self.lost = exc
            raise

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.leases.renew(self.lease, self.ttl)
            except LeaseLost as exc:
                self.lost = exc
                log.warning("job %s: %s", self.lease.job, exc)
                return
            except Exception:
                log.warning("job %s: lease renewal failed", self.lease.job, exc_info=True)


JobFunction = Callable[[LeaseGuard], Awaitable[object]]
SharedJobFunction = Callable[[], Awaitable[object]]
"""Work every process does at once, safe without a lease (e.g. per-item claims in storage)."""


@attrs.define
class _Job:
    name: str
    interval: float
    run: JobFunction | None
    ttl: float
    nudged: asyncio.Event = attrs.field(factory=asyncio.Event)
    shared: SharedJobFunction | None = None


class Scheduler:
    """Runs periodic jobs in this process; only the holder of a job's lease works on it.

    Every process may start one; each tick tries the lease and skips the run
    when another process holds it. ``nudge`` wakes a job early, in this process.
    """

    def __init__(self, leases: Leases) -> None:
        self.leases = leases
        self._jobs: dict[str, _Job] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, name: str, interval: float, run: JobFunction, ttl: float = 60.0) -> None:
        """Register a job run every *interval* seconds (the first run after one interval)."""
        if interval <= 0:
            raise ValueError("a periodic job needs a positive interval")
        self._jobs[_check_job_name(name)] = _Job(name, interval, run, ttl)

    def add_shared(self, name: str, interval: float, run: SharedJobFunction) -> None:
        """Register work that every process runs, with no lease (its items are claimed).

        For work split into many independent items, each claimed in storage, so
        several processes share it instead of one lease holder doing it all.
        """
        if interval <= 0:
            raise ValueError("a periodic job needs a positive interval")
        self._jobs[_check_job_name(name)] = _Job(name, interval, None, 0.0, shared=run)

    @property
    def jobs(self) -> list[str]:
        return sorted(self._jobs)

    def nudge(self, name: str) -> None:
        """Ask for a run of *name* soon (this process only; no storage write)."""
        job = self._jobs.get(name)
        if job is not None:
            job.nudged.set()

    async def run_once(self, name: str) -> bool:
        """Run *name* now if its lease can be taken (shared jobs: always); False when it is held."""
        job = self._jobs[name]
        if job.shared is not None:
            await job.shared()
            return True
        assert job.run is not None
        try:
            async with self.leases.hold(job.name, job.ttl) as guard:
                await job.run(guard)
        except LeaseBusy:
            return False
        except LeaseLost as exc:
            log.warning("job %s stopped: %s", name, exc)
        return True

    async def _loop(self, job: _Job) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.nudged.wait(), job.interval)
            job.nudged.clear()
            try:
                await self.run_once(job.name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job %s failed", job.name)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # A stop() that landed while a run was cleaning up (e.g. in a suppress of
                # the lease renewer's CancelledError) must still end this loop.
                raise asyncio.CancelledError

    def start(self) -> None:
        """Start every registered job's loop on the running event loop."""
        for job in self._jobs.values():
            self._tasks.append(asyncio.create_task(self._loop(job), name=f"job:{job.name}"))

    async def run_forever(self) -> None:
        """Start and wait (``cargohold worker``); returns only when cancelled."""
        self.start()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await self.stop()

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
