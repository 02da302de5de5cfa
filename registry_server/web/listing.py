"""What the home and registry pages list: images from the repository index, usage when counted.

A registry's images come from its repository index (registry_core/storage/repo_index.py):
a page reads the index's summary, its hints and the one or two shards the page falls in,
never a walk of the registry's repositories. Storage used is shown only when it has been
counted (a quota keeps it current; GC and ``cargohold quotas recompute`` measure it);
otherwise the pages say it was not counted yet rather than show a misleading zero.
Nothing here checks permissions (the routes did) or writes storage.
"""

from __future__ import annotations

import asyncio

import attrs

from registry_core.attachments import is_attachment_tag
from registry_core.lifecycle.quotas import get_quota
from registry_core.names import Tenant
from registry_core.registry import Registry

from .pages import Page, page_of


@attrs.frozen
class RegistryStats:
    """The numbers shown beside a registry's name."""

    images: int
    """Repositories with at least one manifest (from the repository index)."""
    used_bytes: int | None
    """Unique blobs stored, or None when never counted."""
    tags: int | None
    """Tags counted against an image quota, or None when never counted."""
    max_bytes: int | None
    max_images: int | None

    @property
    def counted(self) -> bool:
        return self.used_bytes is not None


async def registry_stats(registry: Registry, tenant: Tenant) -> RegistryStats:
    images, quota, snapshot = await asyncio.gather(
        registry.repo_index.count(tenant),
        get_quota(registry.settings, tenant.owner, tenant.registry),
        registry.usage.snapshot(tenant),
    )
    counted = quota is not None or snapshot.measured_at is not None
    used = await registry.usage.current(tenant) if counted else None
    return RegistryStats(
        images=images,
        used_bytes=used.bytes if used is not None else None,
        tags=used.images if used is not None else None,
        max_bytes=quota.max_bytes if quota else None,
        max_images=quota.max_images if quota else None,
    )


async def image_listing(
    registry: Registry, tenant: Tenant, query: str, raw_page: str | None, size: int
) -> tuple[list[str], Page, str]:
    """One page of the registry's image names (matching *query* if given)."""
    view = await registry.repo_index.view(tenant)
    if query:
        found, substring = await view.search(query)
        page = page_of(raw_page, size, len(found))
        return page.slice(found), page, "name" if substring else "prefix"
    page = page_of(raw_page, size, view.total)
    return await view.slice(page.start, size), page, "name"


async def tag_counts(registry: Registry, tenant: Tenant, images: list[str]) -> list[int]:
    """Tags of each image (attachments left out): one listing per image on the page."""
    listed = await asyncio.gather(
        *(registry.repository(f"{tenant}/{image}").manifests.tags() for image in images)
    )
    return [sum(1 for tag in tags if not is_attachment_tag(tag)) for tags in listed]
