"""The lifecycle rules as the blob and manifest stores meet them on every write and pull.

:class:`LifecyclePolicy` implements ``storage.policy.WritePolicy``: for each
operation it looks up the registry's immutable patterns, quotas and retention
rules in the settings cache (no storage round trip when none is set) and
answers None when nothing applies, so a registry without rules pays nothing.
When rules apply it checks immutability and quotas before anything is stored,
and keeps the usage ledger current after. Pull times are recorded at most
once per manifest per process per hour, and only for registries whose
retention rules look at them. Nothing here holds state across processes
other than those caches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import attrs

from ..attachments import is_attachment_tag
from ..digest import Digest
from ..names import RepositoryName, Tenant
from ..settings import SettingsStore
from ..storage import layout
from ..storage.driver import StorageDriver, StorageError
from .immutable import ImmutableTags, check_change, get_immutable
from .quotas import Quota, QuotaExceeded, bytes_exceeded, get_quota, images_exceeded
from .retention import RetentionRules, get_retention
from .usage import UsageLedger

log = logging.getLogger(__name__)

PULL_RECORD_INTERVAL = 3600.0
"""A manifest's pull time is written at most this often per process."""
_MAX_PULL_ENTRIES = 100_000


async def quota_applies(settings: SettingsStore, tenant: Tenant) -> bool:
    """True when the registry or its owner has a quota (its ledger must then be kept)."""
    own, owner = await asyncio.gather(
        get_quota(settings, tenant.owner, tenant.registry), get_quota(settings, tenant.owner, None)
    )
    return own is not None or owner is not None


@attrs.define
class _Rules:
    """The rules of one registry for one operation (``storage.policy.RepositoryPolicy``)."""

    ledger: UsageLedger
    tenant: Tenant
    immutable: ImmutableTags | None
    quota: Quota | None
    owner_quota: Quota | None

    @property
    def _counting(self) -> bool:
        return self.quota is not None or self.owner_quota is not None

    def guards_tag(self, tag: str) -> bool:
        if self.immutable is not None and self.immutable.rule_for(tag) is not None:
            return True
        return self._counting and not is_attachment_tag(tag)

    async def check_tag(self, tag: str, current: Digest | None, new: Digest | None) -> None:
        if self.immutable is not None:
            check_change(self.immutable, self.tenant, tag, current, new)
        if current is None and new is not None and self._counting:
            await self._check_images(1)

    async def tag_changed(self, tag: str, current: Digest | None, new: Digest | None) -> None:
        if not self._counting:
            return
        if is_attachment_tag(tag):
            return
        if current is None and new is not None:
            await self.ledger.add_images(self.tenant, 1)
        elif current is not None and new is None:
            await self.ledger.add_images(self.tenant, -1)

    async def _check_images(self, more: int) -> None:
        if self.quota is not None and self.quota.max_images is not None:
            used = (await self.ledger.current(self.tenant)).images
            if used + more > self.quota.max_images:
                raise images_exceeded(f"registry {self.tenant}", used, self.quota.max_images)
        if self.owner_quota is not None and self.owner_quota.max_images is not None:
            used = (await self.ledger.owner_total(self.tenant.owner)).images
            if used + more > self.owner_quota.max_images:
                raise images_exceeded(
                    f"owner {self.tenant.owner}", used, self.owner_quota.max_images
                )

    async def check_bytes(self, incoming: int, digest: Digest | None = None) -> None:
        if not self._counting or incoming <= 0:
            return
        over = await self._bytes_over(incoming)
        # Only a push that would go over pays the round trip asking whether the blob is
        # already counted here (then linking it again adds nothing).
        if over is not None and not (
            digest is not None and await self.ledger.is_charged(self.tenant, digest)
        ):
            raise over

    async def _bytes_over(self, incoming: int) -> QuotaExceeded | None:
        if self.quota is not None and self.quota.max_bytes is not None:
            used = (await self.ledger.current(self.tenant)).bytes
            if used + incoming > self.quota.max_bytes:
                return bytes_exceeded(
                    f"registry {self.tenant}", used, self.quota.max_bytes, incoming
                )
        if self.owner_quota is not None and self.owner_quota.max_bytes is not None:
            used = (await self.ledger.owner_total(self.tenant.owner)).bytes
            if used + incoming > self.owner_quota.max_bytes:
                return bytes_exceeded(
                    f"owner {self.tenant.owner}", used, self.owner_quota.max_bytes, incoming
                )
        return None

    async def blob_linked(self, digest: Digest, size: int) -> None:
        if self._counting:
            await self.ledger.charge_blob(self.tenant, digest, size)


class LifecyclePolicy:
    """Per-registry lifecycle rules for the stores of one Registry (``WritePolicy``)."""

    def __init__(self, driver: StorageDriver, settings: SettingsStore, ledger: UsageLedger) -> None:
        self.driver = driver
        self.settings = settings
        self.ledger = ledger
        self._pulls: dict[tuple[str, str], float] = {}
        self.configured_retention: dict[str, RetentionRules] = {}
        """Rules from the TOML file, for registries with none stored."""
        self.untagged_grace: float = 3600.0
        """``[gc] grace``: retention's untagged rule never deletes a younger manifest (it may
        be a child of an index whose push is in flight; see ``lifecycle/gc.py``)."""

    async def of(self, name: RepositoryName) -> _Rules | None:
        tenant = name.tenant
        # One after the other: every push asks, and the answers are nearly always in the
        # settings cache, where an await does not suspend; a gather would cost three tasks
        # per write to save two storage reads once per cache lifetime.
        immutable = await get_immutable(self.settings, tenant)
        quota = await get_quota(self.settings, tenant.owner, tenant.registry)
        owner_quota = await get_quota(self.settings, tenant.owner, None)
        if immutable is None and quota is None and owner_quota is None:
            return None
        return _Rules(self.ledger, tenant, immutable, quota, owner_quota)

    async def pulled(self, name: RepositoryName, digest: Digest) -> None:
        key = (name.value, str(digest))
        now = time.monotonic()
        last = self._pulls.get(key)
        if last is not None and now - last < PULL_RECORD_INTERVAL:
            return
        rules = await get_retention(self.settings, name.tenant, self.configured_retention)
        if rules is None or rules.delete_unpulled_after is None:
            return
        if len(self._pulls) >= _MAX_PULL_ENTRIES:
            self._pulls.clear()  # forgetting only costs one more write per manifest
        self._pulls[key] = now
        # A failed record must never fail the pull; retention then sees an older time.
        with contextlib.suppress(StorageError):
            await self.driver.write(layout.pull_time(name, digest), f"{time.time():.3f}".encode())
