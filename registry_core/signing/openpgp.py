"""OpenPGP keys and signatures for simple signing, made by GnuPG through python-gnupg.

GnuPG is what containers/image's gpgme verifies with, so its output is what
skopeo and podman accept. Every operation runs in a throwaway ``GNUPGHOME``
(mode 0700, deleted afterwards) except signing, which keeps one keyring per
process and key so that each signature does not pay a key import; that
folder lives in the process's temporary directory and is removed at exit.
These functions block (they run ``gpg``): call them off the event loop. This
module never writes to registry storage and never logs key material.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import subprocess
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import attrs
import gnupg


class OpenPgpError(Exception):
    """GnuPG refused a key or could not sign."""


@attrs.frozen
class OpenPgpKey:
    fingerprint: str
    public: str = attrs.field(repr=False)
    secret: str = attrs.field(repr=False)


@attrs.frozen
class Verified:
    """A signature that checked out: the signed bytes and the signer's fingerprint."""

    payload: bytes
    fingerprint: str


HOME_PREFIX = "cargohold-gpg-"
"""Temporary GNUPGHOMEs are named ``cargohold-gpg-PID-…`` so that a later process can
tell which ones a dead process left behind (see :func:`remove_stale_homes`)."""


def _new_home() -> str:
    return tempfile.mkdtemp(prefix=f"{HOME_PREFIX}{os.getpid()}-")


def _remove_home(directory: str) -> None:
    """Stop the home's gpg-agent, then delete the folder.

    gpg starts a gpg-agent daemon per GNUPGHOME for secret-key work, and the daemon does
    not end when its folder is deleted: without ``gpgconf --kill`` every generated,
    imported or evicted key would leave a process behind for the life of the machine.
    """
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            ["gpgconf", "--homedir", directory, "--kill", "gpg-agent"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )
    shutil.rmtree(directory, ignore_errors=True)


def remove_stale_homes(tmp: str | None = None) -> int:
    """Remove the homes (and stop the agents) of processes that died without cleaning up
    (kill -9, a crash): a server calls this once at start. Returns how many it removed."""
    removed = 0
    base = tmp or tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for entry in os.scandir(base):
            pid_text = entry.name[len(HOME_PREFIX) :].partition("-")[0]
            if not entry.name.startswith(HOME_PREFIX) or not pid_text.isdigit():
                continue
            if _alive(int(pid_text)):
                continue
            _remove_home(entry.path)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def _home() -> Iterator[gnupg.GPG]:
    directory = _new_home()
    try:
        yield gnupg.GPG(gnupghome=directory)
    finally:
        _remove_home(directory)


def generate(uid: str, bits: int = 3072) -> OpenPgpKey:
    """A new RSA signing key (no passphrase: it is sealed before it is stored)."""
    with _home() as gpg:
        name, _, email = uid.partition(" <")
        params = gpg.gen_key_input(
            key_type="RSA",
            key_length=bits,
            key_usage="sign",
            name_real=name,
            name_email=email.rstrip(">") or None,
            no_protection=True,
            expire_date=0,
        )
        made = gpg.gen_key(params)
        fingerprint = str(made.fingerprint or "")
        if not fingerprint:
            raise OpenPgpError(f"gpg could not generate a key: {made.stderr[-300:]}")
        public = gpg.export_keys(fingerprint)
        secret = gpg.export_keys(fingerprint, secret=True, expect_passphrase=False)
        return OpenPgpKey(fingerprint.upper(), public, secret)


def inspect_secret(armored: str) -> OpenPgpKey:
    """Check an armored secret key an admin imports; return it with its public half."""
    with _home() as gpg:
        result = gpg.import_keys(armored)
        secrets = gpg.list_keys(secret=True)
        if not result.fingerprints or len(secrets) != 1:
            raise OpenPgpError("expected exactly one armored OpenPGP secret key")
        fingerprint = str(secrets[0]["fingerprint"]).upper()
        public = gpg.export_keys(fingerprint)
        secret = gpg.export_keys(fingerprint, secret=True, expect_passphrase=False)
        if not secret:
            raise OpenPgpError("the OpenPGP key must not be protected by a passphrase")
        return OpenPgpKey(fingerprint, public, secret)


def public_fingerprint(armored: str) -> str:
    """The fingerprint of one armored public key."""
    with _home() as gpg:
        result = gpg.import_keys(armored)
        if not result.fingerprints:
            raise OpenPgpError("not an armored OpenPGP public key")
        return str(result.fingerprints[0]).upper()


MAX_KEYRINGS = 256
"""Keyrings (temporary folders) one process keeps; the least recently used is removed."""
_keyrings: OrderedDict[str, str] = OrderedDict()
_lock = threading.Lock()


def _keyring_for(key: OpenPgpKey) -> str:
    # One keyring per process and key: the import costs more than the signature.
    with _lock:
        directory = _keyrings.get(key.fingerprint)
        if directory is not None:
            _keyrings.move_to_end(key.fingerprint)
            return directory
        directory = _new_home()
        result = gnupg.GPG(gnupghome=directory).import_keys(key.secret)
        if not result.fingerprints:
            _remove_home(directory)
            raise OpenPgpError("gpg did not take the signing key")
        _keyrings[key.fingerprint] = directory
        while len(_keyrings) > MAX_KEYRINGS:
            # A signature still running in it fails and is retried by the catch-up pass.
            _, oldest = _keyrings.popitem(last=False)
            _remove_home(oldest)
        return directory


@atexit.register
def _remove_keyrings() -> None:
    with _lock:
        for directory in _keyrings.values():
            _remove_home(directory)
        _keyrings.clear()


def sign(key: OpenPgpKey, payload: bytes) -> bytes:
    """An OpenPGP signed message (binary, not armored) holding *payload*, as gpgme reads it."""
    gpg = gnupg.GPG(gnupghome=_keyring_for(key))
    signed = gpg.sign_file(
        io.BytesIO(payload),
        keyid=key.fingerprint,
        binary=True,
        clearsign=False,
        extra_args=["--digest-algo", "SHA256"],
    )
    if not signed.data:
        raise OpenPgpError(f"gpg could not sign: {(signed.stderr or '')[-300:]}")
    return bytes(signed.data)


def verify(signature: bytes, public_keys: list[str]) -> Verified | None:
    """The payload of *signature* if one of *public_keys* made it; None otherwise."""
    with _home() as gpg:
        for armored in public_keys:
            gpg.import_keys(armored)
        result = gpg.decrypt(signature)
        if not result.valid or not result.data:
            return None
        fingerprint = str(result.pubkey_fingerprint or result.fingerprint or "").upper()
        return Verified(bytes(result.data), fingerprint)
