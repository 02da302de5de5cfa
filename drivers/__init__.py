"""Storage drivers, found by name.

``open_driver(url)`` picks a driver by the URL's scheme: built-in ones are
listed here, and any installed package can add more through the
``cargohold.drivers`` entry-point group (the entry point names a callable
taking ``(url, **options)`` and returning a StorageDriver). Nothing registers
itself on import: the lookup table is explicit.

``options`` are the backend's own (for fsspec drivers: the filesystem's storage
options, handed over unchanged). Cargohold's own keys (part size, timeouts,
retries) travel separately as :class:`DriverSettings`, given only to factories
that declare a ``settings`` parameter.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import urlsplit

from registry_core.storage.driver import DriverSettings, StorageDriver

DriverFactory = Callable[..., StorageDriver]
ENTRY_POINT_GROUP = "cargohold.drivers"

_BUILTIN: dict[str, str] = {
    "file": "drivers.local:open_local",
    "memory": "drivers.memory:open_memory",
    "s3": "drivers.s3:open_s3",
    "gs": "drivers.gcs:open_gcs",
    "gcs": "drivers.gcs:open_gcs",
    "az": "drivers.azure:open_azure",
    "abfs": "drivers.azure:open_azure",
}


class UnknownDriver(ValueError):
    """No driver is installed for a storage URL's scheme."""


def _load(spec: str) -> DriverFactory:
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module), attribute)  # type: ignore[no-any-return]


def available_drivers() -> list[str]:
    names = set(_BUILTIN)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def driver_factory(scheme: str) -> DriverFactory:
    """The factory registered for *scheme* (built-in first, then entry points)."""
    if scheme in _BUILTIN:
        return _load(_BUILTIN[scheme])
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == scheme:
            return ep.load()  # type: ignore[no-any-return]
    raise UnknownDriver(
        f"no storage driver for {scheme!r}; installed: {', '.join(available_drivers())}"
    )


def _takes_settings(factory: DriverFactory) -> bool:
    try:
        parameter = inspect.signature(factory).parameters.get("settings")
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.kind in (
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )


def open_driver(
    url: str, *, settings: DriverSettings | None = None, **options: Any
) -> StorageDriver:
    """Open the driver a storage URL names: a plain path, ``file:///abs``, ``memory://``,
    ``s3://bucket/prefix``, ``gs://...``, ``az://container/prefix``..."""
    scheme = urlsplit(url).scheme if "://" in url else "file"
    factory = driver_factory(scheme)
    if settings is not None and _takes_settings(factory):
        return factory(url, settings=settings, **options)
    return factory(url, **options)
