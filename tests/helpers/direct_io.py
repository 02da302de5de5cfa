"""Whether a folder's file system takes ``O_DIRECT``: the disk does, tmpfs refused it
before Linux 6.6 (EINVAL) and takes it since. Tests of the local driver's direct writes
expect refusals or direct bytes by what the folder answers here."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest


def takes_direct_io(folder: Path) -> bool:
    probe = folder / ".direct-probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600))
    except OSError as exc:
        assert exc.errno == errno.EINVAL, exc
        return False
    finally:
        probe.unlink(missing_ok=True)
    return True


def refuse_o_direct(monkeypatch: pytest.MonkeyPatch, module: Any) -> None:
    """Make *module*'s ``os.open`` answer EINVAL to ``O_DIRECT``, as tmpfs did before
    Linux 6.6 (and ramfs, and some FUSE file systems)."""
    real_open = os.open

    def refusing_open(path: str, flags: int, *args: int) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(module.os, "open", refusing_open)
