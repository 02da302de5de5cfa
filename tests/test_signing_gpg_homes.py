"""gpg's per-home agents never outlive the work that started them.

gpg starts a gpg-agent daemon for each GNUPGHOME it does secret-key work in, and the
daemon keeps running after its folder is deleted. Without care, every key made, imported
or evicted from the keyring cache (and every keyring of a killed server) leaves a process
behind for the life of the machine.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import gnupg

from registry_core.signing import openpgp


def _agents_for(home: str) -> list[str]:
    found = subprocess.run(["pgrep", "-f", f"gpg-agent --homedir {home}"], capture_output=True)
    return found.stdout.decode().split()


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_generating_a_key_leaves_no_agent_or_home(monkeypatch) -> None:
    made: list[str] = []
    new_home = openpgp._new_home

    def recording() -> str:
        made.append(new_home())
        return made[-1]

    monkeypatch.setattr(openpgp, "_new_home", recording)
    key = openpgp.generate("Test <test@example.invalid>", bits=2048)
    assert key.fingerprint and len(made) == 1
    assert not os.path.exists(made[0])  # the home is gone ...
    assert _agents_for(made[0]) == []  # ... and so is the agent gpg started for it


def test_a_dead_processs_home_and_agent_are_removed() -> None:
    # A short base folder: gpg-agent's socket path must fit a unix socket's 108 bytes.
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="gh") as base:
        _remove_a_dead_processs_home(Path(base))


def _remove_a_dead_processs_home(tmp_path: Path) -> None:
    key = openpgp.generate("Test <test@example.invalid>", bits=2048)
    stale = tmp_path / f"{openpgp.HOME_PREFIX}{_dead_pid()}-abcd"
    stale.mkdir(mode=0o700)
    gpg = gnupg.GPG(gnupghome=str(stale))
    assert gpg.import_keys(key.secret).fingerprints  # secret-key work: starts an agent
    assert _agents_for(str(stale)), "gpg started no agent: the test would prove nothing"
    mine = tmp_path / f"{openpgp.HOME_PREFIX}{os.getpid()}-efgh"
    mine.mkdir()
    other = tmp_path / "cargohold-gpg-not-a-pid"
    other.mkdir()

    assert openpgp.remove_stale_homes(str(tmp_path)) == 1

    assert not stale.exists()
    assert _agents_for(str(stale)) == []
    assert mine.exists() and other.exists()  # a live process's home, a name not ours
