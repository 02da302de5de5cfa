"""Open upload sessions counted by their markers (``UploadLimits``), in the library.

A session's marker, its record and the count of the tenant's open sessions are
written and listed in one step; the count leaves the new session out. A refused
start leaves neither marker nor session behind, and markers of sessions nobody
finished are tidied by later starts once they are stale.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from drivers.local import LocalDriver
from registry_core import Registry
from registry_core.errors import TooManyRequests
from registry_core.storage import layout
from registry_core.storage.blobs import UploadLimits

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
