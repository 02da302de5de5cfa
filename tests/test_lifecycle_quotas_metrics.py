"""Usage on /metrics: totals always, per-owner series only as an opt-in."""

from __future__ import annotations

import re
import time
from pathlib import Path

from tests.helpers.images import build_image, make_random_layer
from tests.helpers.registry_api import new_session, push_image
from tests.helpers.server import RegistryServer
from tests.helpers.tenants import cargohold_cli


def metric(server: RegistryServer, pattern: str, timeout: float = 30.0) -> float | None:
    """The value of the first /metrics line matching *pattern*, waiting for it to be non-zero."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        text = new_session().get(f"{server.url}/metrics").text
        found = re.search(rf"^{pattern} (\S+)$", text, re.MULTILINE)
        value = float(found[1]) if found else None
        if value:
            return value
        time.sleep(0.2)
    return value


def start(registry_factory, tmp_path: Path, *, by_owner: bool) -> RegistryServer:
    store = tmp_path / "store"
    store.mkdir()
    config = tmp_path / "cargohold.toml"
    config.write_text(
        f"[quotas]\nusage_interval = 0.5\nmetrics_by_owner = {'true' if by_owner else 'false'}\n"
    )
    cargohold_cli("quotas", "set", "acme", "--bytes", "1GiB", storage=f"file://{store}")
    return registry_factory(storage_url=f"file://{store}", config=config)


def test_usage_totals_are_on_metrics(registry_factory, tmp_path: Path) -> None:
    server = start(registry_factory, tmp_path, by_owner=False)
    image = build_image([make_random_layer(50_000, seed="metrics")])
    push_image(server.url, "acme/prod/app", image, "1")

    stored = metric(server, "cargohold_usage_bytes")

    assert stored == sum(b.size for b in image.blobs())
    assert 'owner="acme"' not in new_session().get(f"{server.url}/metrics").text


def test_per_owner_usage_and_limits_are_an_opt_in(registry_factory, tmp_path: Path) -> None:
    server = start(registry_factory, tmp_path, by_owner=True)
    image = build_image([make_random_layer(20_000, seed="per-owner")])
    push_image(server.url, "acme/prod/app", image, "1")

    used = metric(server, r'cargohold_owner_usage_bytes\{owner="acme"\}')
    limit = metric(server, r'cargohold_owner_quota_bytes\{owner="acme"\}')

    assert used == sum(b.size for b in image.blobs())
    assert limit == 2**30
