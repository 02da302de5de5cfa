"""Repository names, tags and references: the OCI grammar plus our tenant shape.

A repository name is ``OWNER/REGISTRY/IMAGE[/MORE]``: every component follows
the distribution spec's grammar, the whole is at most 255 characters, and the
first two components name the tenant. Validation happens here, once, so a
RepositoryName that exists is always safe to turn into a storage path.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

from .digest import Digest, is_digest
from .errors import DigestInvalid, ManifestUnknown, NameInvalid, TagInvalid

MAX_NAME_LENGTH: Final = 255
MIN_COMPONENTS: Final = 3
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


@attrs.frozen
class Tenant:
    """The ``OWNER/REGISTRY`` pair a repository belongs to."""

    owner: str
    registry: str

    def __str__(self) -> str:
        return f"{self.owner}/{self.registry}"


@attrs.frozen
class RepositoryName:
    """A validated repository name; construct with :meth:`parse`."""

    value: str

    @classmethod
    def parse(cls, text: str) -> RepositoryName:
        if not text:
            raise NameInvalid("repository name is empty")
        if len(text) > MAX_NAME_LENGTH:
            raise NameInvalid(
                f"repository name is {len(text)} characters long; the limit is {MAX_NAME_LENGTH}"
            )
        components = text.split("/")
        for component in components:
            if not component:
                raise NameInvalid(f"repository name {text!r} has an empty path component")
            if not _COMPONENT.fullmatch(component):
                raise NameInvalid(
                    f"repository name component {component!r} is invalid: use lowercase "
                    "letters and digits, separated by '.', '_', '__' or '-'"
                )
        if len(components) < MIN_COMPONENTS:
            raise NameInvalid(f"repository name {text!r} must have the form OWNER/REGISTRY/IMAGE")
        return cls(text)

    @property
    def tenant(self) -> Tenant:
        owner, registry, _ = self.value.split("/", 2)
        return Tenant(owner, registry)

    @property
    def image(self) -> str:
        """The part after ``OWNER/REGISTRY/``."""
        return self.value.split("/", 2)[2]

    def __str__(self) -> str:
        return self.value


def validate_tag(tag: str) -> str:
    """Return *tag* if it follows the spec's tag grammar, else raise TagInvalid."""
    if not _TAG.fullmatch(tag):
        raise TagInvalid(
            f"invalid tag {tag[:140]!r}: up to 128 characters of letters, digits, '_', '.', "
            "'-', not starting with '.' or '-'"
        )
    return tag


@attrs.frozen
class Reference:
    """A manifest reference: exactly one of a tag or a digest."""

    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str, *, write: bool = False) -> Reference:
        """Parse a tag or digest.

        On a read, a malformed reference names no manifest the registry could
        have (MANIFEST_UNKNOWN); on a write it is the client's error
        (TAG_INVALID / DIGEST_INVALID).
        """
        try:
            if is_digest(text):
                return cls(digest=Digest.parse(text))
            return cls(tag=validate_tag(text))
        except (DigestInvalid, TagInvalid) as exc:
            if write:
                raise
            raise ManifestUnknown(exc.message) from None

    def __str__(self) -> str:
        return self.tag if self.tag is not None else str(self.digest)
