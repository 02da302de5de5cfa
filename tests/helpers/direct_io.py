"""Whether a folder's file system takes ``O_DIRECT``: the disk does, tmpfs refused it
before Linux 6.6 (EINVAL) and takes it since. Tests of the local driver's direct writes
expect refusals or direct bytes by what the folder answers here."""

from __future__ import annotations

import errno
import os
from pathlib import Path


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
