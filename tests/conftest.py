"""Shared fixtures: real Cargohold / Distribution servers and fresh repository names.

Fixtures
- ``registry_server``: Cargohold on ``memory://`` storage (function scope).
- ``file_registry_server``: Cargohold on ``file://{tmp_path}/store`` (function scope).
- ``shared_server``: one Cargohold on file storage for the whole session (fast tests;
  use ``unique_repo`` so tests do not see each other's data).
- ``registry_factory``: ``registry_factory(storage_url=None, **RegistryServer kwargs)``
  starts more Cargohold servers (custom config, env, args); all stopped at teardown.
  ``storage_url=None`` means a fresh ``file://`` directory.
- ``distribution_server`` / ``distribution_factory``: CNCF Distribution 2.8 instances.
- ``unique_repo``: a fresh ``test/reg/img-<hex>`` repository name.

When a test fails, the logs of the servers it used are attached to the report.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import unique_repo_name
from tests.helpers.server import DistributionServer, ManagedServer, RegistryServer

LOG_TAIL_CHARS = 30_000


class ServerFactory:
    """Starts servers on demand and stops all of them at teardown."""

    def __init__(self, cls: type[ManagedServer], tmp_path_factory: pytest.TempPathFactory):
        self.cls = cls
        self.tmp_path_factory = tmp_path_factory
        self.servers: list[ManagedServer] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.cls is RegistryServer:
            if not args and kwargs.get("storage_url") is None:
                store = self.tmp_path_factory.mktemp("store")
                kwargs["storage_url"] = f"file://{store}"
        elif not args and "storage_dir" not in kwargs:
            args = (self.tmp_path_factory.mktemp("distribution-store"),)
        kwargs.setdefault("workdir", self.tmp_path_factory.mktemp(self.cls.name))
        server = self.cls(*args, **kwargs)
        self.servers.append(server)
        server.start()
        return server

    def stop_all(self) -> None:
        errors = []
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def registry_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    factory = ServerFactory(RegistryServer, tmp_path_factory)
    yield factory
    factory.stop_all()


@pytest.fixture
def distribution_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    factory = ServerFactory(DistributionServer, tmp_path_factory)
    yield factory
    factory.stop_all()


@pytest.fixture
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """Cargohold with ``memory://`` storage, for one test."""
    server = RegistryServer("memory://", workdir=tmp_path_factory.mktemp("cargohold"))
    with server:
        yield server


@pytest.fixture
def file_registry_server(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryServer]:
    """Cargohold with ``file://{tmp_path}/store`` storage, for one test."""
    store = tmp_path / "store"
    store.mkdir()
    server = RegistryServer(f"file://{store}", workdir=tmp_path_factory.mktemp("cargohold"))
    with server:
        yield server


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """One Cargohold (file storage) for the whole session: isolate tests by repository."""
    store = tmp_path_factory.mktemp("shared-store")
    server = RegistryServer(f"file://{store}", workdir=tmp_path_factory.mktemp("shared-cargohold"))
    with server:
        yield server


@pytest.fixture
def distribution_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DistributionServer]:
    """CNCF Distribution (``/usr/bin/docker-registry``) on a fresh directory."""
    server = DistributionServer(
        tmp_path_factory.mktemp("distribution-store"),
        workdir=tmp_path_factory.mktemp("distribution"),
    )
    with server:
        yield server


@pytest.fixture
def unique_repo() -> str:
    """A fresh, valid repository name: ``test/reg/img-<8 hex>``."""
    return unique_repo_name()


# --- server logs in failure reports ------------------------------------------------------


def _servers_of(item: pytest.Item) -> list[tuple[str, ManagedServer]]:
    found: list[tuple[str, ManagedServer]] = []
    for name, value in getattr(item, "funcargs", {}).items():
        if isinstance(value, ManagedServer):
            found.append((name, value))
        elif isinstance(value, ServerFactory):
            found.extend((f"{name}[{i}]", s) for i, s in enumerate(value.servers))
    return found


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    if report.failed and report.when == "call":
        for name, server in _servers_of(item):
            text = server.log_text()
            if len(text) > LOG_TAIL_CHARS:
                text = (
                    f"[... {len(text) - LOG_TAIL_CHARS} chars cut ...]\n" + text[-LOG_TAIL_CHARS:]
                )
            report.sections.append((f"{name} log ({server.log_path})", text or "(empty)"))
    return report


# --- object-store emulators (cloud driver tests) ------------------------------------------


def _emulator(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:

    from tests.helpers.emulators import Azurite, GcsEmulator, MotoServer, emulator_missing

    missing = emulator_missing(kind)
    if missing:
        # `make test` installs every emulator: a missing one is a failure, never a skip.
        pytest.fail(f"{missing} (run `make test-deps` / `make venv`)")
    cls = {"s3": MotoServer, "gcs": GcsEmulator, "azure": Azurite}[kind]
    with cls(workdir=tmp_path_factory.mktemp(cls.name)) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """moto's S3 server on a free port, for the whole session."""
    yield from _emulator("s3", tmp_path_factory)


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """gcp-storage-emulator on a free port, for the whole session."""
    yield from _emulator("gcs", tmp_path_factory)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Azurite's blob service on a free port, for the whole session."""
    yield from _emulator("azure", tmp_path_factory)
