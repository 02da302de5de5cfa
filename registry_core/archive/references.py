"""Image names as archives carry them, turned into names inside one tenant.

``docker.io/library/app:1`` becomes ``app:1``: the registry host is dropped,
and Docker Hub's ``library/`` prefix with it. A name that already starts with
the target ``OWNER/REGISTRY/`` loses that prefix too, so an archive exported
from a registry imports back under the same names.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

from ..errors import NameInvalid
from ..names import RepositoryName, Tenant, validate_tag

_DOCKER_HUB: Final = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_TAG_ONLY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


@attrs.frozen
class SourceName:
    """A name an archive gives an image: a repository path (None: only a tag) and a tag."""

    path: str | None
    tag: str | None

    def __str__(self) -> str:
        return f"{self.path or ''}{':' + self.tag if self.tag else ''}"


def parse_reference(text: str) -> SourceName:
    """``[HOST/]PATH[:TAG][@DIGEST]`` with the host and Docker Hub's ``library/`` dropped."""
    text = text.strip()
    name, _, _digest = text.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    first, sep, rest = name.partition("/")
    domain = None
    if sep and ("." in first or ":" in first or first == "localhost"):
        domain, name = first, rest
    if (domain is None or domain in _DOCKER_HUB) and name.startswith("library/"):
        name = name[len("library/") :]
    return SourceName(name or None, tag or None)


def parse_ref_name(annotation: str) -> SourceName:
    """``org.opencontainers.image.ref.name``: a full reference, or (as skopeo writes) a tag."""
    if "/" not in annotation and ":" not in annotation and _TAG_ONLY.fullmatch(annotation):
        return SourceName(None, annotation)
    return parse_reference(annotation)


def parse_tag_option(text: str) -> SourceName:
    """A caller's ``--tag NAME[:TAG]`` (``NAME`` inside the tenant)."""
    parsed = parse_reference(text)
    if parsed.path is None:
        raise NameInvalid(f"--tag {text!r} names no repository: use NAME[:TAG]")
    return parsed


def repository_in(tenant: Tenant, path: str) -> RepositoryName:
    """``OWNER/REGISTRY/path``, without doubling a prefix *path* already carries."""
    prefix = f"{tenant}/"
    if path.startswith(prefix):
        path = path[len(prefix) :]
    return RepositoryName.parse(prefix + path)


def checked_tag(tag: str) -> str:
    return validate_tag(tag)
