"""Immutable tags: per-registry tag patterns that, once a tag is set, cannot move or go.

A registry's rule is a list of glob patterns (``v*``, ``release-*``, or ``*``
for every tag). A tag matching one may be created and re-pushed with the same
digest; pushing another digest under it, or deleting it, is refused with
DENIED and a message naming the rule. Attachment tags (``sha256-<hex>.sig``
and the like) are never immutable: they move as signatures are added. This
module decides; the manifest store asks it (through the lifecycle policy)
before a tag changes, and it never writes anything itself.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Annotated

import msgspec

from ..attachments import is_attachment_tag
from ..digest import Digest
from ..errors import Denied
from ..names import Tenant
from ..settings import SettingsStore

KIND = "immutable"

Pattern = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class ImmutableTags(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    patterns: list[Pattern] = msgspec.field(default_factory=list)
    """Glob patterns over tag names; ``*`` makes every tag immutable."""

    def rule_for(self, tag: str) -> str | None:
        """The first pattern making *tag* immutable, or None."""
        if is_attachment_tag(tag):
            return None
        for pattern in self.patterns:
            if fnmatchcase(tag, pattern):
                return pattern
        return None


class TagImmutable(Denied):
    default_message = "the tag is immutable"


def check_change(
    rules: ImmutableTags, tenant: Tenant, tag: str, current: Digest | None, new: Digest | None
) -> None:
    """Raise TagImmutable when *tag* may not go from *current* to *new* (None: deleted)."""
    if current is None or current == new:
        return
    pattern = rules.rule_for(tag)
    if pattern is None:
        return
    action = "deleted" if new is None else "moved to another manifest"
    raise TagImmutable(
        f"tag {tag!r} is immutable in {tenant} (rule {pattern!r}) and cannot be {action}",
        detail={"tag": tag, "rule": pattern, "current": str(current)},
    )


async def get_immutable(settings: SettingsStore, tenant: Tenant) -> ImmutableTags | None:
    rules = await settings.get(tenant.owner, tenant.registry, KIND, ImmutableTags)
    return rules if rules is not None and rules.patterns else None


async def set_immutable(settings: SettingsStore, tenant: Tenant, patterns: list[str]) -> None:
    """Store a registry's immutable patterns (an empty list removes the rule)."""
    if patterns:
        value = msgspec.convert({"patterns": patterns}, ImmutableTags)
        await settings.put(tenant.owner, tenant.registry, KIND, value)
    else:
        await settings.delete(tenant.owner, tenant.registry, KIND)
