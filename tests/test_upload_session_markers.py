"""Open upload sessions counted by their markers (``UploadLimits``), in the library.

A session's marker, its record and the count of the tenant's open sessions are
written and listed in one step; the count leaves the new session out. A refused
start leaves neither marker nor session behind, and markers of sessions nobody
finished are tidied by later starts once they are stale.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.local import LocalDriver
from registry_core import Registry
from registry_core.digest import Digest
from registry_core.errors import TooManyRequests
from registry_core.storage import layout
from registry_core.storage.blobs import UploadLimits, _format_time

REPO = "marks/reg/app"


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(LocalDriver(str(tmp_path / "store")))


async def _markers(registry: Registry) -> list[str]:
    blobs = registry.repository(REPO).blobs
    try:
        return await registry.driver.list(layout.upload_markers_dir(blobs.name.tenant))
    except Exception:
        return []


async def test_sessions_up_to_the_limit_start_and_the_next_is_refused_leaving_nothing(
    registry: Registry,
) -> None:
    blobs = registry.repository(REPO).blobs
    limits = UploadLimits(per_repository=2)
    first = await blobs.start_upload(limits)
    second = await blobs.start_upload(limits)
    with pytest.raises(TooManyRequests):
        await blobs.start_upload(limits)
    assert len(await _markers(registry)) == 2
    sessions = await registry.driver.list(layout.upload_dir(blobs.name, first.id).rsplit("/", 1)[0])
    assert sorted(sessions) == sorted([first.id, second.id])


async def test_a_stale_marker_does_not_count_and_is_tidied_by_the_next_start(
    registry: Registry,
) -> None:
    blobs = registry.repository(REPO).blobs
    limits = UploadLimits(per_repository=1, stale_after=60.0)
    old = int(time.time()) - 3600
    stale = layout.upload_marker(blobs.name.tenant, f"{old}-{blobs._repository_key()}-gone")
    await registry.driver.write(stale, b"")
    started = await blobs.start_upload(limits)
    assert await _markers(registry) == [
        blobs._marker(started.id, started.started_at).rsplit("/")[-1]
    ]


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_session_id_carries_its_start_second_and_stays_a_random_uuid(
    registry: Registry,
) -> None:
    blobs = registry.repository(REPO).blobs
    first = await blobs.start_upload(UploadLimits(per_repository=5))
    second = await blobs.start_upload(UploadLimits(per_repository=5))
    parsed = uuid.UUID(first.id)
    assert parsed.version == 8
    assert int(first.id[:8], 16) == int(first.started_at)
    assert first.id[8:] != second.id[8:]


async def test_a_small_commit_of_a_session_started_by_an_earlier_version_frees_its_slot(
    registry: Registry,
) -> None:
    # Earlier versions named sessions by random (version 4) UUIDs: the marker's name is
    # then learned from the session's record, and the commit still removes it.
    blobs = registry.repository(REPO).blobs
    limits = UploadLimits(per_repository=1)
    upload_id = str(uuid.uuid4())
    now = time.time()
    await registry.driver.write(
        layout.upload_started_at(blobs.name, upload_id), _format_time(now).encode()
    )
    await registry.driver.write(blobs._marker(upload_id, now), b"")
    body = b"from an older session"
    digest = Digest.of(body)
    await blobs.commit_whole(upload_id, digest, _one(body), limits)
    assert await _markers(registry) == []
    assert await blobs.exists(digest)
    await blobs.start_upload(limits)  # the slot is free again
