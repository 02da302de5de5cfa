"""The hooks that per-registry rules (immutable tags, quotas, pull times) get on writes and reads.

Blob and manifest stores call :meth:`WritePolicy.of` once per operation; it
answers None when the registry has no rule that cares (from a per-process
settings cache: no storage round trip), and the store then does nothing more.
This module only declares the contract; ``registry_core.lifecycle.policy``
implements it. It never reads storage or knows what a rule means.
"""

from __future__ import annotations

from typing import Protocol

from ..digest import Digest
from ..names import RepositoryName


class RepositoryPolicy(Protocol):
    """The rules that apply to one repository's writes, as one operation sees them."""

    def guards_tag(self, tag: str) -> bool:
        """True when :meth:`check_tag` needs the tag's current digest (the store reads it)."""
        ...

    async def check_tag(self, tag: str, current: Digest | None, new: Digest | None) -> None:
        """Raise Denied when *tag* may not go from *current* to *new* (None: deleted)."""
        ...

    async def check_bytes(self, incoming: int, digest: Digest | None = None) -> None:
        """Raise Denied when storing *incoming* more bytes (of blob *digest*, if known) would
        exceed a quota."""
        ...

    async def blob_linked(self, digest: Digest, size: int) -> None:
        """A blob was linked into the repository (upload commit or mount)."""
        ...

    async def tag_changed(self, tag: str, current: Digest | None, new: Digest | None) -> None:
        """*tag* went from *current* to *new* (None: absent); keeps image counts."""
        ...


class WritePolicy(Protocol):
    """Finds the rules of a repository's registry."""

    async def of(self, name: RepositoryName) -> RepositoryPolicy | None:
        """The rules applying to *name*, or None when none do."""
        ...

    async def pulled(self, name: RepositoryName, digest: Digest) -> None:
        """A manifest was pulled (cheap: a recorder keeps at most one write per hour)."""
        ...
