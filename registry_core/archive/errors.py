"""Errors of archive import and export, rendered by the server like every RegistryError."""

from __future__ import annotations

from ..errors import RegistryError, TooLarge


class ArchiveInvalid(RegistryError):
    """The archive cannot be imported; the message names the entry that is wrong."""

    code, status, default_message = "ARCHIVE_INVALID", 400, "archive invalid"


class ArchiveTooLarge(TooLarge):
    """The archive (as sent, or unpacked) is over ``archives.max_size``: 413."""

    default_message = "archive too large"
