"""Retention rules per registry: which tags and manifests go, and the run that deletes them.

Rules (any combination): keep the N most recent tags per image (repository);
delete tags older than D; delete tags not pulled for D; delete untagged
manifests older than D. Tags matching a protected pattern (``latest``,
``v*``) or an immutable one are never deleted by a rule, and attachments
(``sha256-<hex>.sig`` tags, manifests with a ``subject``) are never counted
or chosen themselves. A tag's age is the time its link was last written; a
tag never pulled counts as pulled when it was pushed or when the rules were
set, whichever is later. Deletion goes through the manifest store's own
``delete`` (the code a client's DELETE runs): a manifest whose every tag a
rule removes is deleted by digest, and its attachments with it. Rules are
stored per registry in the settings store, or given in the TOML file
(``[retention.rules."OWNER/REGISTRY"]``) for registries with none stored.
This module never deletes anything in a dry run and never touches a
registry without rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Annotated

import attrs
import msgspec

from ..attachments import attachment_subject, is_attachment_manifest, is_attachment_tag
from ..digest import Digest
from ..errors import ManifestUnknown, RegistryError
from ..manifest import parse_manifest
from ..names import RepositoryName, Tenant
from ..settings import SettingsStore
from ..storage import layout
from ..storage.driver import PathNotFound
from ..storage.manifests import ManifestStore
from .immutable import ImmutableTags, get_immutable

if TYPE_CHECKING:
    from ..jobs import LeaseGuard
    from ..registry import Registry

KIND = "retention"
JOB = "retention"

Positive = Annotated[float, msgspec.Meta(gt=0)]
Pattern = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class RetentionRules(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """A registry's rules; durations in seconds, None: rule off."""

    keep_last: Annotated[int, msgspec.Meta(ge=0)] | None = None
    delete_older_than: Positive | None = None
    delete_unpulled_after: Positive | None = None
    delete_untagged_after: Positive | None = None
    protected: list[Pattern] = msgspec.field(default_factory=list)
    since: float | None = None
    """When the rules were set: a tag never pulled counts as pulled then."""

    @property
    def empty(self) -> bool:
        return (
            self.keep_last is None
            and self.delete_older_than is None
            and self.delete_unpulled_after is None
            and self.delete_untagged_after is None
        )

    def protects(self, tag: str) -> str | None:
        for pattern in self.protected:
            if fnmatchcase(tag, pattern):
                return pattern
        return None


async def get_retention(
    settings: SettingsStore,
    tenant: Tenant,
    configured: Mapping[str, RetentionRules] | None = None,
) -> RetentionRules | None:
    """The registry's stored rules, else those of the TOML file, else None."""
    rules = await settings.get(tenant.owner, tenant.registry, KIND, RetentionRules)
    if rules is None and configured:
        rules = configured.get(str(tenant))
    return None if rules is None or rules.empty else rules


async def set_retention(settings: SettingsStore, tenant: Tenant, rules: RetentionRules) -> None:
    """Store a registry's rules (rules with nothing on remove them)."""
    if rules.empty:
        await settings.delete(tenant.owner, tenant.registry, KIND)
        return
    if rules.since is None:
        # Editing other rules must not restart the "not pulled for" clock.
        before = await settings.get(tenant.owner, tenant.registry, KIND, RetentionRules)
        kept = before.since if before and before.delete_unpulled_after is not None else None
        rules = msgspec.structs.replace(rules, since=kept or time.time())
    await settings.put(tenant.owner, tenant.registry, KIND, rules)


async def tenants_with_rules(
    registry: Registry, configured: Mapping[str, RetentionRules] | None = None
) -> list[Tenant]:
    """Registries with stored (or configured) rules."""
    found = {Tenant(*key.split("/", 1)) for key in (configured or {}) if "/" in key}
    driver = registry.driver
    with contextlib.suppress(PathNotFound):
        for owner in await driver.list(layout.SETTINGS):
            with contextlib.suppress(PathNotFound):
                for name in await driver.list(layout.settings_owner_dir(owner)):
                    if name != "_owner":
                        found.add(Tenant(owner, name))
    tenants = []
    for tenant in sorted(found, key=str):
        if await get_retention(registry.settings, tenant, configured) is not None:
            tenants.append(tenant)
    return tenants


class RetentionReport(msgspec.Struct, kw_only=True):
    registry: str
    dry_run: bool
    tags: list[str] = msgspec.field(default_factory=list)
    """``REPOSITORY:TAG`` of every tag deleted (or that would be)."""
    manifests: list[str] = msgspec.field(default_factory=list)
    """``REPOSITORY@DIGEST`` of every manifest deleted (or that would be), attachments included."""
    errors: list[str] = msgspec.field(default_factory=list)


@attrs.frozen
class _TagInfo:
    tag: str
    digest: Digest
    written: float


async def _tag_info(manifests: ManifestStore, tag: str) -> _TagInfo | None:
    path = layout.tag_current_link(manifests.name, tag)
    try:
        link, info = await asyncio.gather(manifests.driver.read(path), manifests.driver.stat(path))
        return _TagInfo(tag, Digest.parse(link.decode().strip()), info.mtime)
    except (PathNotFound, RegistryError):
        return None


async def _last_pull(manifests: ManifestStore, digest: Digest) -> float | None:
    try:
        return float(
            (await manifests.driver.read(layout.pull_time(manifests.name, digest))).decode()
        )
    except (PathNotFound, ValueError):
        return None


async def _revision_written(manifests: ManifestStore, digest: Digest) -> float | None:
    try:
        return (await manifests.driver.stat(layout.revision_link(manifests.name, digest))).mtime
    except PathNotFound:
        return None


async def _manifest_facts(
    manifests: ManifestStore, digest: Digest
) -> tuple[bool, tuple[Digest, ...]] | None:
    """(is an attachment, child manifests) of a revision; None when unreadable."""
    try:
        stored = await manifests.get_by_digest(digest)
        parsed = parse_manifest(stored.body, stored.media_type, max_size=manifests.max_size)
    except RegistryError:
        return None
    return is_attachment_manifest(parsed), parsed.manifests


async def plan_repository(
    manifests: ManifestStore,
    rules: RetentionRules,
    now: float,
    immutable: ImmutableTags | None = None,
    grace: float = 0.0,
) -> tuple[list[str], list[Digest]]:
    """(tags to delete alone, manifests to delete by digest) in one repository.

    An untagged manifest goes only once older than both the rule and *grace* (GC's push
    window: it may be an index's child whose index is not pushed yet)."""
    all_tags = await manifests.tags()
    infos = [
        i
        for i in await asyncio.gather(
            *(_tag_info(manifests, t) for t in all_tags if not is_attachment_tag(t))
        )
        if i is not None
    ]

    def kept_by_pattern(tag: str) -> bool:
        if rules.protects(tag) is not None:
            return True
        return immutable is not None and immutable.rule_for(tag) is not None

    candidates = [i for i in infos if not kept_by_pattern(i.tag)]
    doomed: set[str] = set()
    if rules.keep_last is not None:
        newest_first = sorted(candidates, key=lambda i: (-i.written, i.tag))
        doomed.update(i.tag for i in newest_first[rules.keep_last :])
    if rules.delete_older_than is not None:
        doomed.update(i.tag for i in candidates if i.written < now - rules.delete_older_than)
    if rules.delete_unpulled_after is not None:
        pulls = await asyncio.gather(*(_last_pull(manifests, i.digest) for i in candidates))
        for info, pulled in zip(candidates, pulls, strict=True):
            seen = max(pulled or 0.0, info.written, rules.since or 0.0)
            if seen < now - rules.delete_unpulled_after:
                doomed.add(info.tag)
    kept_digests = {i.digest for i in infos if i.tag not in doomed}
    # Attachment tags keep their own manifests (they go with their subject, below).
    attachment_targets = {
        i.digest
        for i in await asyncio.gather(
            *(_tag_info(manifests, t) for t in all_tags if is_attachment_tag(t))
        )
        if i is not None
    }
    doomed_digests = {i.digest for i in infos if i.tag in doomed} - kept_digests
    if not doomed and rules.delete_untagged_after is None:
        return [], []
    revisions = await manifests.revisions()
    facts = dict(
        zip(
            revisions,
            await asyncio.gather(*(_manifest_facts(manifests, d) for d in revisions)),
            strict=True,
        )
    )
    children: set[Digest] = set()
    for digest, fact in facts.items():
        if fact is not None and digest not in doomed_digests:
            children.update(fact[1])
    doomed_digests -= children  # a child of a kept index stays with it
    if rules.delete_untagged_after is not None:
        tagged = {i.digest for i in infos} | attachment_targets
        for digest in revisions:
            fact = facts.get(digest)
            if digest in tagged or digest in children or fact is None or fact[0]:
                continue
            written = await _revision_written(manifests, digest)
            age = max(rules.delete_untagged_after, grace)
            if written is not None and written < now - age:
                doomed_digests.add(digest)
    tags_alone = sorted(i.tag for i in infos if i.tag in doomed and i.digest not in doomed_digests)
    return tags_alone, sorted(doomed_digests, key=str)


async def attachments_of(manifests: ManifestStore, digest: Digest) -> list[Digest]:
    """Manifests attached to *digest* in this repository: referrers and cosign-style tags."""
    found: dict[str, Digest] = {}
    for record in await manifests.referrers(digest):
        with contextlib.suppress(RegistryError):
            found[record["digest"]] = Digest.parse(record["digest"])
    for tag in await manifests.tags():
        if attachment_subject(tag) == digest:
            with contextlib.suppress(ManifestUnknown):
                target = await manifests.resolve(tag)
                found[str(target)] = target
    found.pop(str(digest), None)
    return list(found.values())


async def delete_with_attachments(manifests: ManifestStore, digest: Digest) -> list[Digest]:
    """DELETE a manifest by digest, as a client would (its attachments, and theirs, go with
    it: ``ManifestStore.delete``); return every manifest of the family that is gone."""
    family = [digest]
    for member in family:  # grows as it goes: attachments of attachments
        family.extend(a for a in await attachments_of(manifests, member) if a not in family)
    gone = []
    with contextlib.suppress(ManifestUnknown):
        await manifests.delete(str(digest))
        gone.append(digest)
    for member in family[1:]:
        if await manifests.has_revision(member):  # its subject was gone before this run
            with contextlib.suppress(ManifestUnknown):
                await manifests.delete(str(member))
        if not await manifests.has_revision(member):
            gone.append(member)
    return gone


async def run_retention(
    registry: Registry,
    tenant: Tenant,
    rules: RetentionRules,
    *,
    dry_run: bool = False,
    now: float | None = None,
    guard: LeaseGuard | None = None,
    grace: float | None = None,
) -> RetentionReport:
    """Apply *rules* to every repository of *tenant*; in a dry run only list what would go.

    *grace* protects young untagged manifests (default: ``registry.policy.untagged_grace``,
    the server's ``[gc] grace``)."""
    moment = time.time() if now is None else now
    grace = registry.policy.untagged_grace if grace is None else grace
    immutable = await get_immutable(registry.settings, tenant)
    report = RetentionReport(registry=str(tenant), dry_run=dry_run)
    for name in await registry.repositories(tenant):
        manifests = registry.repository(RepositoryName(name)).manifests
        tags, digests = await plan_repository(manifests, rules, moment, immutable, grace)
        if dry_run:
            report.tags.extend(f"{name}:{t}" for t in tags)
            for digest in digests:
                attached = await attachments_of(manifests, digest)
                dropped = await manifests.tags_pointing_at(digest)
                report.tags.extend(f"{name}:{t}" for t in dropped if not is_attachment_tag(t))
                report.manifests.extend(f"{name}@{d}" for d in [digest, *attached])
            continue
        if guard is not None and (tags or digests):
            await guard.check()
        for tag in tags:
            try:
                await manifests.delete(tag)
                report.tags.append(f"{name}:{tag}")
            except ManifestUnknown:
                pass  # deleted meanwhile
            except RegistryError as exc:
                report.errors.append(f"{name}:{tag}: {exc.message}")
        for digest in digests:
            try:
                dropped_tags = await manifests.tags_pointing_at(digest)
                gone = await delete_with_attachments(manifests, digest)
            except RegistryError as exc:
                report.errors.append(f"{name}@{digest}: {exc.message}")
                continue
            report.tags.extend(f"{name}:{t}" for t in dropped_tags if not is_attachment_tag(t))
            report.manifests.extend(f"{name}@{d}" for d in gone)
            for digest_gone in gone:  # its pull time means nothing any more
                with contextlib.suppress(PathNotFound):
                    await registry.driver.delete(layout.pull_time(manifests.name, digest_gone))
    report.tags.sort()
    report.manifests.sort()
    return report


Duration = (
    Positive
    | Annotated[
        str,
        msgspec.Meta(
            extra_json_schema={"pattern": r"^[1-9][0-9]{0,4}(?:\.[0-9]{1,6})?[smhdw]?(?!\n)$"}
        ),
    ]
)
"""Seconds, or ``30d``, ``12h``, ``15m``, ``90s`` (documented pattern: what parse_duration takes)."""


def _seconds(value: float | str | None) -> float | None:
    from ..tenancy import parse_duration

    if value is None or isinstance(value, int | float):
        return value
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"duration {value!r} must be positive")
    return seconds


class RetentionSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Rules as people write them (TOML, API): durations as seconds or ``30d``, ``12h``."""

    keep_last: Annotated[int, msgspec.Meta(ge=0)] | None = None
    delete_older_than: Duration | None = None
    delete_unpulled_after: Duration | None = None
    delete_untagged_after: Duration | None = None
    protected: list[Pattern] = msgspec.field(default_factory=list)

    def rules(self) -> RetentionRules:
        """The stored form; ValueError names a bad duration."""
        return RetentionRules(
            keep_last=self.keep_last,
            delete_older_than=_seconds(self.delete_older_than),
            delete_unpulled_after=_seconds(self.delete_unpulled_after),
            delete_untagged_after=_seconds(self.delete_untagged_after),
            protected=list(self.protected),
        )


async def untagged_policy(
    registry: Registry, configured: Mapping[str, RetentionRules] | None = None
) -> Callable[[str, Digest, float], bool] | None:
    """GC's ``collect_untagged`` hook from every registry's ``delete_untagged_after`` rule.

    Rules are read once, here (the hook itself must not touch storage); None when
    no registry has the rule, so GC keeps every untagged manifest.
    """
    limits: dict[str, float] = {}
    for tenant in await tenants_with_rules(registry, configured):
        rules = await get_retention(registry.settings, tenant, configured)
        if rules is not None and rules.delete_untagged_after is not None:
            limits[str(tenant)] = rules.delete_untagged_after
    if not limits:
        return None
    now = time.time()

    def collect(repository: str, digest: Digest, written: float) -> bool:
        limit = limits.get("/".join(repository.split("/", 2)[:2]))
        return limit is not None and written < now - limit

    return collect
