"""Quotas on moto S3 with two processes' worth of registries on one bucket."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from registry_core import Digest, Registry
from registry_core.lifecycle.quotas import Quota, QuotaExceeded, set_quota
from registry_core.lifecycle.usage import Usage, recompute_usage
from registry_core.names import Tenant
from tests.helpers.emulators import cloud_driver, unique_bucket

TENANT = Tenant("acme", "prod")


@pytest.fixture
async def processes(moto_server: Any) -> AsyncIterator[tuple[Registry, Registry]]:
    bucket = moto_server.create_bucket(unique_bucket("quota"))
    prefix = f"t-{secrets.token_hex(4)}"
    first, second = (
        cloud_driver(moto_server, bucket, prefix),
        cloud_driver(moto_server, bucket, prefix),
    )
    one, two = Registry(first, settings_ttl=0.0), Registry(second, settings_ttl=0.0)
    yield one, two
    await one.close()
    await two.close()


async def upload(registry: Registry, repo: str, data: bytes) -> Digest:
    digest = Digest.of(data)
    async with registry.repository(repo).blobs.upload() as session:
        await session.write(data)
        await session.commit(digest)
    return digest


async def test_two_processes_on_one_bucket_count_shared_and_own_blobs_exactly(
    processes: tuple[Registry, Registry],
) -> None:
    one, two = processes
    await set_quota(one.settings, "acme", "prod", Quota(max_bytes=10_000))
    await recompute_usage(one, [TENANT])

    await asyncio.gather(
        upload(one, "acme/prod/a", b"s" * 1000),
        upload(two, "acme/prod/b", b"s" * 1000),
        upload(one, "acme/prod/a", b"1" * 2000),
        upload(two, "acme/prod/b", b"2" * 3000),
    )

    assert (await one.usage.measure(TENANT))[0] == Usage(bytes=6000, images=0)
    assert (await two.usage.compact(TENANT)) == Usage(bytes=6000, images=0)
    assert (await recompute_usage(one, [TENANT]))[TENANT] == Usage(bytes=6000, images=0)


async def test_a_push_over_the_quota_is_refused_by_the_other_process_too(
    processes: tuple[Registry, Registry],
) -> None:
    one, two = processes
    await set_quota(one.settings, "acme", "prod", Quota(max_bytes=5000))
    await recompute_usage(one, [TENANT])
    await upload(one, "acme/prod/a", b"a" * 4000)

    with pytest.raises(QuotaExceeded):
        await upload(two, "acme/prod/b", b"b" * 2000)

    assert (await two.usage.measure(TENANT))[0].bytes == 4000
