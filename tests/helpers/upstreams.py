"""Upstream peers for the pull-through tests, seeded with known images, all on 127.0.0.1.

- :class:`HtpasswdDistribution`: CNCF Distribution 2.8.2 (Debian ``docker-registry``)
  with htpasswd Basic auth; the bcrypt entry is made here with the ``bcrypt`` package.
- :func:`start_cargohold_upstream`: a second Cargohold with auth on (its Bearer token
  flow), a private registry :data:`PRIVATE` and a reader and a writer of it.
- :func:`seed` pushes the test images to a peer under a name prefix and returns them
  (:class:`Seeded`): a single image ``app:1.0``, a multi-arch index ``multi:1.0``, a
  ``shared:1.0`` whose content differs per peer (for priority order) and, when asked, a
  ``big:1.0`` image with one 50 MiB layer (:data:`BIG_LAYER_SIZE`).
- :func:`start_pull_through` starts the Cargohold under test with upstreams of registry
  :data:`MIRROR` set through the command line (:class:`Upstream`, ``cargohold upstreams
  add``), loopback allowed, and one secrets key shared by the server and the CLI.
- :func:`blob_files` / :func:`corrupt_blobs` look at a ``file://`` store afterwards:
  every committed blob must hash to its own name.

A pull-through registry maps ``OWNER/REGISTRY/IMAGE`` to ``PREFIX/IMAGE`` at the
upstream: the Distribution peer holds images at the top (no prefix), the Cargohold peer
under ``up/private`` (prefix :data:`PRIVATE`).
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt

from .images import Image, Index, build_image, make_random_layer, sample_image, sample_multiarch
from .registry_api import new_session, push_image
from .server import DistributionServer, RegistryServer
from .tenants import Credential, Seeder, cargohold_cli, store_url, write_config

__all__ = [
    "BIG_LAYER_SIZE",
    "MIRROR",
    "PRIVATE",
    "CargoholdUpstream",
    "HtpasswdDistribution",
    "PullThrough",
    "Seeded",
    "Upstream",
    "big_image",
    "blob_files",
    "corrupt_blobs",
    "htpasswd_entry",
    "seed",
    "start_cargohold_upstream",
    "start_pull_through",
]

PRIVATE = "up/private"
"""The private registry of the Cargohold peer (the upstream ``prefix`` to use for it)."""

MIRROR = "acme/mirror"
"""The registry of the Cargohold under test that pulls through the peers."""

BIG_LAYER_SIZE = 50 * 1024 * 1024


def htpasswd_entry(username: str, password: str) -> str:
    """One ``user:$2b$...`` line, as ``htpasswd -B`` writes it (Distribution takes bcrypt only)."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    return f"{username}:{hashed}"


class HtpasswdDistribution(DistributionServer):
    """Distribution 2.8.2 that wants Basic credentials (``htpasswd`` auth) for everything.

    ``username``/``password`` are generated unless given. Ready when ``GET /v2/`` answers
    with the credentials (401 without them).
    """

    name = "distribution-htpasswd"

    def __init__(
        self,
        storage_dir: str | Path,
        *,
        username: str = "puller",
        password: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(storage_dir, **kwargs)
        self.username = username
        self.password = password or "pw-" + secrets.token_urlsafe(12)
        self.htpasswd_path = self.workdir / "htpasswd"
        self.htpasswd_path.write_text(htpasswd_entry(self.username, self.password) + "\n")

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    def config_yaml(self) -> str:
        return super().config_yaml() + (
            f'auth:\n  htpasswd:\n    realm: distribution-tests\n    path: "{self.htpasswd_path}"\n'
        )

    def _wait_ready(self) -> None:
        # The base probe wants 200 from /v2/ without credentials: ask with them.
        wait_for_v2(self, new_session(self.auth))


def wait_for_v2(server: DistributionServer, session: Any) -> None:
    """Wait until *server* answers 200 on /v2/ through *session* (credentials, a CA): for
    Distribution set-ups that the base probe, anonymous plain HTTP, cannot reach."""
    assert server.proc is not None
    deadline = time.monotonic() + server.startup_timeout
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited during start-up\n{server.log_text()}")
        try:
            if session.get(server.url + "/v2/", timeout=2).status_code == 200:
                return
        except OSError:  # requests' connection errors: not listening yet
            pass
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{server.name} not ready\n{server.log_text()}")
        time.sleep(0.05)


@dataclass(frozen=True)
class CargoholdUpstream:
    """A running Cargohold peer with auth on and the private registry :data:`PRIVATE`."""

    server: RegistryServer
    reader: Credential
    writer: Credential

    @property
    def url(self) -> str:
        return self.server.url


def start_cargohold_upstream(registry_factory: Any, tmp_path: Path) -> CargoholdUpstream:
    """Start a second Cargohold (auth on, token flow) with ``up/private`` and its users."""
    store = tmp_path / "upstream-cargohold-store"
    store.mkdir(parents=True, exist_ok=True)
    seeder = Seeder(store_url(store))
    seeder.registry(PRIVATE)
    reader = seeder.user("up-reader")
    seeder.member(PRIVATE, reader.username, "read")
    writer = seeder.user("up-writer")
    seeder.member(PRIVATE, writer.username, "write")
    config = write_config(tmp_path / "upstream-cargohold.toml", auth={})
    server = registry_factory(storage_url=seeder.storage, auth=True, config=config)
    return CargoholdUpstream(server, reader, writer)


@functools.cache
def big_image(seed: str = "cargohold-big") -> Image:
    """An image with one layer of :data:`BIG_LAYER_SIZE` random bytes (built once per session)."""
    return build_image([make_random_layer(BIG_LAYER_SIZE, seed=seed)], fmt="oci")


@dataclass(frozen=True)
class Seeded:
    """What :func:`seed` pushed: ``repo(name)`` gives the repository at the peer."""

    prefix: str
    single: Image
    multiarch: Index
    shared: Image
    big: Image | None

    def repo(self, image: str) -> str:
        return f"{self.prefix}/{image}" if self.prefix else image


def seed(
    base_url: str,
    *,
    prefix: str = "",
    auth: tuple[str, str] | None = None,
    big: bool = False,
    label: str | None = None,
) -> Seeded:
    """Push ``app:1.0``, ``multi:1.0``, ``shared:1.0`` (and ``big:1.0``) under ``prefix``.

    ``label`` makes the content unique to this peer (``shared`` then differs between two
    peers seeded with different labels); random by default.
    """
    label = label or secrets.token_hex(4)
    session = new_session(auth)
    found = Seeded(
        prefix=prefix,
        single=sample_image(f"app-{label}", layers=2),
        multiarch=sample_multiarch(f"multi-{label}", layers=2),
        shared=sample_image(f"shared-{label}", layers=1, fmt="docker"),
        big=big_image() if big else None,
    )
    push_image(base_url, found.repo("app"), found.single, "1.0", session=session)
    push_image(base_url, found.repo("multi"), found.multiarch, "1.0", session=session)
    push_image(base_url, found.repo("shared"), found.shared, "1.0", session=session)
    if found.big is not None:
        push_image(base_url, found.repo("big"), found.big, "1.0", session=session)
    return found


def blob_files(store: Path) -> dict[str, Path]:
    """``{digest: data file}`` of every blob committed in a ``file://`` store's folder."""
    root = store / "docker" / "registry" / "v2" / "blobs" / "sha256"
    return {f"sha256:{data.parent.name}": data for data in root.glob("*/*/data")}


def corrupt_blobs(store: Path) -> list[str]:
    """Digests of committed blobs whose bytes do not hash to their name (should be [])."""
    bad: list[str] = []
    for digest, path in blob_files(store).items():
        sha = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                sha.update(chunk)
        if f"sha256:{sha.hexdigest()}" != digest:
            bad.append(digest)
    return bad


@dataclass(frozen=True)
class Upstream:
    """One upstream of a registry, as ``cargohold upstreams add`` takes it."""

    name: str
    url: str
    priority: int | None = None
    username: str | None = None
    password: str | None = None
    cache: bool = True
    tag_ttl: str | None = None
    images: str | None = None
    prefix: str | None = None

    def cli_args(self, tenant: str) -> list[str]:
        args = ["upstreams", "add", tenant, self.url, "--name", self.name]
        if self.priority is not None:
            args += ["--priority", str(self.priority)]
        if self.username is not None:
            args += ["--username", self.username, "--password-stdin"]
        if not self.cache:
            args.append("--no-cache")
        if self.tag_ttl is not None:
            args += ["--tag-ttl", self.tag_ttl]
        if self.images is not None:
            args += ["--images", self.images]
        if self.prefix is not None:
            args += ["--prefix", self.prefix]
        return args


@dataclass(frozen=True)
class PullThrough:
    """The Cargohold under test: ``server``, its ``store`` folder and ``config`` file."""

    server: RegistryServer
    tenant: str
    store: Path
    config: Path

    @property
    def url(self) -> str:
        return self.server.url

    def repo(self, image: str) -> str:
        """``OWNER/REGISTRY/IMAGE`` of an upstream image pulled through this registry."""
        return f"{self.tenant}/{image}"

    def add(self, upstream: Upstream) -> None:
        """``cargohold upstreams add`` on this server's storage (seen within cache_ttl)."""
        password = None if upstream.password is None else upstream.password + "\n"
        cargohold_cli(*upstream.cli_args(self.tenant), config=self.config, input=password)

    def remove(self, name: str) -> None:
        cargohold_cli("upstreams", "remove", self.tenant, name, config=self.config)


def start_pull_through(
    registry_factory: Any,
    tmp_path: Path,
    *upstreams: Upstream,
    tenant: str = MIRROR,
    auth: bool = False,
    allow_loopback: bool = True,
    settings: dict[str, Any] | None = None,
    auth_settings: dict[str, Any] | None = None,
    name: str = "pull-through",
    public: bool = False,
    workers: int = 1,
    env: dict[str, str | None] | None = None,
) -> PullThrough:
    """Start the Cargohold under test with ``upstreams`` for ``tenant`` (added by the CLI).

    ``settings`` go to ``[upstreams]`` (``timeout``, ``negative_ttl``, ...);
    ``allow_loopback`` puts ``127.0.0.0/8`` in ``allow_networks``. ``auth`` False serves an
    open registry. ``auth.cache_ttl`` is 1 s so a setting changed later is seen quickly.
    ``workers`` > 1 serves with that many processes on one port and one storage.
    ``env`` is the server's extra environment.
    """
    store = tmp_path / f"{name}-store"
    store.mkdir(parents=True, exist_ok=True)
    Seeder(store_url(store)).registry(tenant, public=public)
    section: dict[str, Any] = {"allow_networks": ["127.0.0.0/8"] if allow_loopback else []}
    section.update(settings or {})
    config = write_config(
        tmp_path / f"{name}.toml",
        storage={"url": store_url(store)},
        auth={"cache_ttl": 1.0, **(auth_settings or {})},
        secrets={"key": "test-key-" + secrets.token_urlsafe(24)},
        upstreams=section,
    )
    for upstream in upstreams:
        password = None if upstream.password is None else upstream.password + "\n"
        cargohold_cli(*upstream.cli_args(tenant), config=config, input=password)
    extra = ["--workers", str(workers)] if workers != 1 else []
    server = registry_factory(
        storage_url=store_url(store), auth=auth, config=config, extra_args=extra, env=env
    )
    return PullThrough(server, tenant, store, config)
