"""What an attachment is: a manifest that describes another one and belongs to it.

An attachment is either a manifest tagged the cosign way (``sha256-<hex>.sig``,
``.att`` or ``.sbom``: the tag names its subject's digest) or any manifest with
a ``subject`` field (the OCI referrers model: signatures, SBOMs, attestations).
Attachments are kept by GC while their subject is kept, deleted with it, and
left out of retention counts, tag immutability and image-count quotas. This
module only classifies names and parsed manifests; it never reads storage.
"""

from __future__ import annotations

import re
from typing import Final

from .digest import ALGORITHMS, Digest
from .manifest import ParsedManifest

ATTACHMENT_KINDS: Final = ("sig", "att", "sbom")
"""The tag suffixes cosign uses for signatures, attestations and SBOMs."""

_TAG = re.compile(r"^(?P<algorithm>[a-z0-9]+)-(?P<hex>[a-f0-9]+)\.(?P<kind>sig|att|sbom)$")


def attachment_subject(tag: str) -> Digest | None:
    """The digest a cosign attachment tag names (``sha256-<hex>.sig``), or None."""
    match = _TAG.fullmatch(tag)
    if match is None:
        return None
    algorithm, hexpart = match["algorithm"], match["hex"]
    if ALGORITHMS.get(algorithm) != len(hexpart):
        return None
    return Digest(algorithm, hexpart)


def is_attachment_tag(tag: str) -> bool:
    """True for a cosign attachment tag such as ``sha256-<hex>.sig``."""
    return attachment_subject(tag) is not None


def is_attachment_manifest(manifest: ParsedManifest) -> bool:
    """True when the manifest describes another one (it has a ``subject``)."""
    return manifest.subject is not None
