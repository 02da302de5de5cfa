"""The usage ledger: per-event deltas, compaction, crash safety, exact recompute.

Two ``Registry`` objects over one folder stand for two server processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest

from drivers import open_driver
from registry_core import Digest, Registry
from registry_core.lifecycle.quotas import Quota, QuotaExceeded, set_quota
from registry_core.lifecycle.usage import Snapshot, Usage, recompute_usage
from registry_core.names import Tenant
from registry_core.storage import layout

T = TypeVar("T")
TENANT = Tenant("acme", "prod")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"file://{tmp_path}"


def process(store: str) -> Registry:
    return Registry(open_driver(store), settings_ttl=0.0)


async def upload(registry: Registry, repo: str, data: bytes) -> Digest:
    digest = Digest.of(data)
    async with registry.repository(repo).blobs.upload() as session:
        await session.write(data)
        await session.commit(digest)
    return digest


async def with_quota(registry: Registry) -> None:
    await set_quota(registry.settings, "acme", "prod", Quota(max_bytes=10**9))
    await recompute_usage(registry, [TENANT])


def deltas(registry: Registry) -> list[str]:
    try:
        return run(registry.driver.list(layout.usage_deltas_dir("acme", "prod")))
    except Exception:
        return []


def test_a_blob_pushed_by_two_processes_is_counted_once(store: str) -> None:
    one, two = process(store), process(store)
    run(with_quota(one))

    async def both() -> None:
        await asyncio.gather(
            upload(one, "acme/prod/a", b"x" * 1000), upload(two, "acme/prod/b", b"x" * 1000)
        )

    run(both())

    assert run(process(store).usage.measure(TENANT))[0] == Usage(bytes=1000, images=0)


def test_compaction_folds_the_deltas_into_the_snapshot(store: str) -> None:
    registry = process(store)
    run(with_quota(registry))
    for n in range(3):
        run(upload(registry, "acme/prod/app", bytes([n]) * 100))

    before = run(registry.usage.measure(TENANT))[0]
    folded = run(registry.usage.compact(TENANT))

    assert folded == before == Usage(bytes=300, images=0)
    assert deltas(registry) == []
    assert run(process(store).usage.measure(TENANT))[0] == folded


def test_a_crash_between_snapshot_and_delta_deletion_counts_nothing_twice(store: str) -> None:
    registry = process(store)
    run(with_quota(registry))
    run(upload(registry, "acme/prod/app", b"y" * 500))
    names = deltas(registry)
    snapshot = run(registry.usage.snapshot(TENANT))
    # What compaction writes first; the crash leaves the absorbed deltas in place.
    crashed = Snapshot(bytes=snapshot.bytes + 500, images=0, absorbed=names)
    path = layout.usage_snapshot("acme", "prod")
    run(registry.driver.write(path, msgspec.json.encode(crashed)))

    assert run(process(store).usage.measure(TENANT))[0].bytes == 500
    assert run(registry.usage.compact(TENANT)).bytes == 500
    assert deltas(registry) == []


def test_recompute_corrects_drift_instead_of_accumulating_it(store: str) -> None:
    registry = process(store)
    run(with_quota(registry))
    run(upload(registry, "acme/prod/app", b"z" * 700))
    bogus = f"{'9' * 20}.lost.123456.7"  # an event counted that never happened
    run(registry.driver.write(layout.usage_delta("acme", "prod", bogus), b""))
    assert run(registry.usage.measure(TENANT))[0] == Usage(bytes=123456 + 700, images=7)

    exact = run(recompute_usage(registry, [TENANT]))[TENANT]

    assert exact == Usage(bytes=700, images=0)
    assert run(process(store).usage.measure(TENANT))[0] == exact


def test_a_registry_without_a_quota_writes_nothing_on_push(store: str) -> None:
    registry = process(store)

    run(upload(registry, "acme/prod/app", b"free" * 100))

    assert not Path(store[len("file://") :], layout.usage_dir("acme", "prod")).exists()


class CountingDriver:
    """A driver that counts the storage requests made through it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not callable(target) or name in ("local_path",):
            return target

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return target(*args, **kwargs)

        return counted


def storage_requests_of_a_push(registry: Registry, driver: CountingDriver, seed: bytes) -> int:
    async def push() -> None:
        digest = await upload(registry, "acme/free/app", seed * 100)
        manifest = msgspec.json.encode(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": str(digest),
                    "size": 100 * len(seed),
                },
                "layers": [],
            }
        )
        await registry.repository("acme/free/app").manifests.put(manifest, None, tag=seed.hex())

    before = driver.calls
    run(push())
    return driver.calls - before


def test_a_registry_without_rules_pays_no_storage_request_once_its_settings_are_cached(
    tmp_path: Path,
) -> None:
    costs = []
    for policy in (True, False):
        driver = CountingDriver(open_driver(f"file://{tmp_path / str(policy)}"))
        registry = Registry(driver, settings_ttl=3600.0)  # type: ignore[arg-type]
        if not policy:
            registry.policy = None  # type: ignore[assignment]
        storage_requests_of_a_push(registry, driver, b"warm-up")
        costs.append(storage_requests_of_a_push(registry, driver, b"measured"))

    with_rules_checked, without_any_hook = costs
    assert with_rules_checked == without_any_hook


def test_an_unreferenced_upload_counts_until_gc_removes_it(store: str) -> None:
    registry = process(store)
    run(with_quota(registry))
    run(upload(registry, "acme/prod/app", b"orphan" * 200))
    assert run(registry.usage.measure(TENANT))[0].bytes == 1200

    run(registry.collect_garbage(grace=0.0, settle=0.0))

    assert run(process(store).usage.measure(TENANT))[0] == Usage(bytes=0, images=0)


def test_a_mount_is_refused_over_the_quota_unless_the_blob_is_already_counted(
    store: str,
) -> None:
    registry = process(store)
    run(set_quota(registry.settings, "acme", "prod", Quota(max_bytes=1000)))
    run(recompute_usage(registry, [TENANT]))
    inside = run(upload(registry, "acme/prod/app", b"i" * 600))
    outside = run(upload(registry, "acme/free/app", b"o" * 600))
    target = registry.repository("acme/prod/tool").blobs

    with pytest.raises(QuotaExceeded):
        run(target.mount(outside, registry.repository("acme/free/app").blobs))
    mounted = run(target.mount(inside, registry.repository("acme/prod/app").blobs))

    assert mounted is not None
    assert run(process(store).usage.measure(TENANT))[0].bytes == 600
