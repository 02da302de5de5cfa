"""Quotas per owner and per registry: the settings, sizes as people write them, the refusal.

A quota caps a registry's (or all of an owner's registries') stored bytes and,
optionally, its number of images. Stored bytes are those of the unique blobs
linked into the registry's repositories (a layer shared by two images counts
once; a blob uploaded but not referenced yet counts until GC removes it;
manifests themselves are not counted); for an owner, the sum over its
registries. An *image* is a tag, attachment tags (``sha256-<hex>.sig``) left
out. Usage itself is kept by :mod:`.usage`; this module decides, from usage
and limits, whether a write may go on, and never blocks a read.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

from ..errors import Denied
from ..settings import SettingsStore

KIND = "quota"
"""The settings kind a quota is stored under (of an owner, or of one registry)."""

Count = Annotated[int, msgspec.Meta(ge=0)]


class Quota(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Limits of an owner or a registry; None: no limit of that kind."""

    max_bytes: Count | None = None
    max_images: Count | None = None

    @property
    def empty(self) -> bool:
        return self.max_bytes is None and self.max_images is None


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(text: str | int) -> int:
    """``10GiB``, ``500MB``, ``1.5 GiB`` or plain bytes -> bytes (GB = 10^9, GiB = 2^30)."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError("a size must not be negative")
        return text
    match = _SIZE.fullmatch(text)
    unit = _UNITS.get(match[2].lower()) if match else None
    if match is None or unit is None:
        raise ValueError(f"invalid size {text!r}: use e.g. 10GiB, 500MiB, 2GB or bytes")
    return int(float(match[1]) * unit)


def format_size(size: int) -> str:
    """Bytes for people: ``512 B``, ``3.5 MiB``, ``10.0 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class QuotaExceeded(Denied):
    """A write that would take a registry or an owner past its quota (403 DENIED)."""

    default_message = "quota exceeded"


def bytes_exceeded(scope: str, used: int, limit: int, incoming: int) -> QuotaExceeded:
    return QuotaExceeded(
        f"quota exceeded: {scope} uses {format_size(used)} of its {format_size(limit)} limit "
        f"and this upload needs {format_size(incoming)} more",
        detail={"scope": scope, "used": used, "limit": limit, "incoming": incoming},
    )


def images_exceeded(scope: str, used: int, limit: int) -> QuotaExceeded:
    return QuotaExceeded(
        f"quota exceeded: {scope} holds {used} of its {limit} images; delete some first",
        detail={"scope": scope, "used_images": used, "limit_images": limit},
    )


async def get_quota(settings: SettingsStore, owner: str, registry: str | None) -> Quota | None:
    """The quota of an owner (``registry`` None) or of one registry, if one is set."""
    quota = await settings.get(owner, registry, KIND, Quota)
    return None if quota is None or quota.empty else quota


async def set_quota(
    settings: SettingsStore, owner: str, registry: str | None, quota: Quota
) -> None:
    """Store (or, when *quota* has no limit, remove) an owner's or a registry's quota."""
    if quota.empty:
        await settings.delete(owner, registry, KIND)
    else:
        await settings.put(owner, registry, KIND, quota)
