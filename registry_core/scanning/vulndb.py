"""The offline vulnerability database: OSV records imported into storage, indexed for scans.

An import reads OSV records (``all.zip`` exports, single ``.json`` files, folders
of them; the caller fetches URLs to a local file first), reduces each to
advisories per (ecosystem, package) and writes them as one small object per
package under a fresh *generation* of that source, so a scan reads only the
packages it looks up and never the whole database. Only then is the one
``current`` object rewritten to name the new generation (the atomic switch:
scans see the old data or the new, never half), and generations older than the
previous one are deleted. Imports run under the ``vulndb`` lease so two never
interleave their switches. Records that do not parse are skipped and counted.
Package objects of a generation never change, so each process caches them.
This module never fetches from the network and never builds a storage path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
import uuid
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import attrs
import msgspec

from ..storage import layout
from ..storage.driver import PathNotFound, StorageDriver
from .osv import Advisory, BadRecord, advisories_of

_WRITE_BATCH = 64
_CACHE_ENTRIES = 20000


class SourceState(msgspec.Struct, kw_only=True):
    label: str
    generation: str
    imported: float
    records: int
    advisories: int
    skipped: int
    withdrawn: int = 0
    ecosystems: dict[str, int] = {}


class DatabaseState(msgspec.Struct, kw_only=True):
    sources: dict[str, SourceState] = {}

    @property
    def version(self) -> str:
        """Changes whenever any source's live generation does (re-matching keys on it)."""
        if not self.sources:
            return ""
        text = ",".join(f"{s}={v.generation}" for s, v in sorted(self.sources.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@attrs.define
class ImportReport:
    source: str
    label: str
    records: int = 0
    advisories: int = 0
    skipped: int = 0
    withdrawn: int = 0
    packages: int = 0


def source_id(label: str) -> str:
    """A stable id of a source (path or URL as given): re-importing it replaces its data."""
    return hashlib.sha256(label.encode()).hexdigest()[:16]


def records_in(path: str | os.PathLike[str]) -> Iterator[bytes]:
    """Every OSV record in an ``all.zip``, a ``.json`` file (one record or a list), a folder."""
    path = Path(path)
    if path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file() and child.suffix in (".json", ".zip"):
                yield from records_in(child)
        return
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.filename.endswith(".json") and not info.is_dir():
                    yield from _split(archive.read(info))
        return
    yield from _split(path.read_bytes())


def _split(data: bytes) -> Iterator[bytes]:
    stripped = data.lstrip()
    if stripped.startswith(b"["):
        try:
            items = json.loads(data)
        except ValueError:
            yield data  # counted as one bad record
            return
        for item in items:
            yield json.dumps(item).encode()
        return
    yield data


def _collect(paths: list[str], report: ImportReport) -> dict[tuple[str, str], list[Advisory]]:
    """Parse every record of a source (blocking: run in a thread)."""
    grouped: dict[tuple[str, str], list[Advisory]] = {}
    for path in paths:
        for raw in records_in(path):
            report.records += 1
            try:
                found = advisories_of(raw)
            except BadRecord:
                report.skipped += 1
                continue
            if not found:
                if _is_withdrawn(raw):
                    report.withdrawn += 1
                continue
            for advisory in found:
                grouped.setdefault((advisory.ecosystem, advisory.package), []).append(advisory)
                report.advisories += 1
    return grouped


def _is_withdrawn(raw: bytes) -> bool:
    with contextlib.suppress(ValueError, AttributeError):
        return bool(json.loads(raw).get("withdrawn"))
    return False


class VulnDatabase:
    """Import, switch and look up OSV data on one storage driver."""

    def __init__(self, driver: StorageDriver, state_ttl: float = 5.0) -> None:
        self.driver = driver
        self.state_ttl = state_ttl
        self._state: tuple[float, DatabaseState] | None = None
        self._packages: OrderedDict[str, list[Advisory]] = OrderedDict()
        self._reading: dict[str, asyncio.Future[list[Advisory]]] = {}

    async def state(self, *, fresh: bool = False) -> DatabaseState:
        """What is live (cached per process for ``state_ttl`` seconds unless *fresh*)."""
        now = time.monotonic()
        if not fresh and self._state is not None and self._state[0] > now:
            return self._state[1]
        try:
            raw = await self.driver.read(layout.vulndb_current())
            state = msgspec.json.decode(raw, type=DatabaseState)
        except PathNotFound:
            state = DatabaseState()
        self._state = (now + self.state_ttl, state)
        return state

    async def advisories(
        self, state: DatabaseState, ecosystem: str, package: str
    ) -> list[Advisory]:
        """Every live advisory for one (ecosystem, package key), from every source."""
        found: list[Advisory] = []
        for source, info in state.sources.items():
            path = layout.vulndb_package(source, info.generation, ecosystem, package)
            cached = self._packages.get(path)
            if cached is None:
                # Concurrent scans ask for the same packages: one read per path in flight.
                pending = self._reading.get(path)
                if pending is None:
                    pending = asyncio.ensure_future(self._read_package(path))
                    self._reading[path] = pending
                    pending.add_done_callback(lambda _f, path=path: self._reading.pop(path, None))
                cached = await asyncio.shield(pending)
            else:
                self._packages.move_to_end(path)
            found.extend(cached)
        return found

    async def _read_package(self, path: str) -> list[Advisory]:
        try:
            found = msgspec.json.decode(await self.driver.read(path), type=list[Advisory])
        except PathNotFound:
            found = []
        self._packages[path] = found
        if len(self._packages) > _CACHE_ENTRIES:
            self._packages.popitem(last=False)
        return found

    async def import_source(self, label: str, paths: list[str]) -> ImportReport:
        """Import one source (its local files) as a new generation, then switch to it.

        The caller holds the ``vulndb`` lease (see :func:`import_sources`).
        """
        source = source_id(label)
        report = ImportReport(source=source, label=label)
        grouped = await asyncio.to_thread(_collect, paths, report)
        generation = f"{int(time.time())}-{uuid.uuid4().hex[:8]}"
        items = list(grouped.items())
        ecosystems: dict[str, int] = {}
        for start in range(0, len(items), _WRITE_BATCH):
            batch = items[start : start + _WRITE_BATCH]
            await asyncio.gather(
                *(
                    self.driver.write(
                        layout.vulndb_package(source, generation, eco, name),
                        msgspec.json.encode(advisories),
                    )
                    for (eco, name), advisories in batch
                )
            )
            for (eco, _name), _advisories in batch:
                ecosystems[eco] = ecosystems.get(eco, 0) + 1
        report.packages = len(items)
        state = await self.state(fresh=True)
        previous = state.sources.get(source)
        state.sources[source] = SourceState(
            label=label,
            generation=generation,
            imported=time.time(),
            records=report.records,
            advisories=report.advisories,
            skipped=report.skipped,
            withdrawn=report.withdrawn,
            ecosystems=ecosystems,
        )
        await self.driver.write(layout.vulndb_current(), msgspec.json.encode(state))
        self._state = (time.monotonic() + self.state_ttl, state)
        await self._prune(source, keep={generation, previous.generation if previous else ""})
        return report

    async def _prune(self, source: str, keep: set[str]) -> None:
        """Delete old generations, keeping the previous one for scans still reading it."""
        try:
            generations = await self.driver.list(layout.vulndb_source_dir(source))
        except PathNotFound:
            return
        for generation in generations:
            if generation not in keep:
                with contextlib.suppress(PathNotFound):
                    await self.driver.delete(layout.vulndb_generation_dir(source, generation))

    async def remove_source(self, label_or_id: str) -> bool:
        state = await self.state(fresh=True)
        source = label_or_id if label_or_id in state.sources else source_id(label_or_id)
        if source not in state.sources:
            return False
        del state.sources[source]
        await self.driver.write(layout.vulndb_current(), msgspec.json.encode(state))
        self._state = (time.monotonic() + self.state_ttl, state)
        await self._prune(source, keep=set())
        return True


async def import_sources(
    driver: StorageDriver,
    sources: list[tuple[str, list[str]]],
    *,
    database: VulnDatabase | None = None,
    lease_ttl: float = 300.0,
    wait: float = 600.0,
) -> list[ImportReport]:
    """Import ``(label, local paths)`` sources under the ``vulndb`` lease (waits for it)."""
    from ..jobs import LeaseBusy, Leases

    database = database or VulnDatabase(driver)
    leases = Leases(driver)
    deadline = time.monotonic() + wait
    while True:
        try:
            async with leases.hold("vulndb", lease_ttl) as guard:
                reports = []
                for label, paths in sources:
                    await guard.check()
                    reports.append(await database.import_source(label, paths))
                return reports
        except LeaseBusy:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(1.0)
