"""Quotas against skopeo pushes: images that fit land, images that do not are refused early.

Quotas are set with ``cargohold quotas set`` on the server's storage; usage is read
back with ``cargohold quotas show`` (what the ledger says) and ``quotas recompute``
(what the repositories hold, measured exactly).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry_core.lifecycle.quotas import format_size, parse_size
from tests.helpers import CommandError, skopeo, write_oci_layout
from tests.helpers.images import Image, build_image, make_random_layer
from tests.helpers.registry_api import get_manifest, new_session
from tests.helpers.server import RegistryServer
from tests.helpers.tenants import cargohold_cli

pytestmark = pytest.mark.clients

KIB = 1024


@pytest.fixture
def storage(tmp_path_factory) -> str:
    return f"file://{tmp_path_factory.mktemp('quota-store')}"


def start(registry_factory, storage: str) -> RegistryServer:
    # A short settings cache, so a quota changed on storage counts at once.
    return registry_factory(storage_url=storage, env={"CARGOHOLD_AUTH_CACHE_TTL": "0.1"})


def image_of(seed: str, *layer_sizes: int, shared: tuple[bytes, str] | None = None) -> Image:
    layers = [make_random_layer(size, seed=f"{seed}-{i}") for i, size in enumerate(layer_sizes)]
    return build_image([*([shared] if shared else []), *layers])


def push(server: RegistryServer, tmp_path: Path, repo: str, image: Image, tag: str) -> None:
    layout = tmp_path / f"layout-{image.digest[7:19]}"
    write_oci_layout(layout, image, "src")
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        f"oci:{layout}:src",
        f"docker://{server.host}/{repo}:{tag}",
    )


def used(storage: str, target: str = "acme/prod") -> tuple[int, int]:
    """(bytes, images) the usage ledger reports."""
    out = cargohold_cli("quotas", "show", target, storage=storage).stdout
    found = re.search(r"used:.*\((\d+) bytes\), (\d+) images", out)
    assert found, out
    return int(found[1]), int(found[2])


def measured(storage: str, target: str = "acme/prod") -> tuple[int, int]:
    """(bytes, images) measured exactly from the repositories."""
    out = cargohold_cli("quotas", "recompute", target, storage=storage).stdout
    found = re.search(r"\((\d+) bytes\), (\d+) images", out)
    assert found, out
    return int(found[1]), int(found[2])


def leftover_uploads(server: RegistryServer) -> list[Path]:
    assert server.storage_path is not None
    return [p for p in server.storage_path.rglob("_uploads/*") if p.is_dir()]


def test_sizes_accept_binary_and_decimal_units() -> None:
    assert parse_size("10GiB") == 10 * 2**30
    assert parse_size("500MiB") == 500 * 2**20
    assert parse_size("2GB") == 2 * 10**9
    assert parse_size("3 MB") == 3 * 10**6
    assert parse_size("1234") == 1234
    assert format_size(3 * 2**20 + 2**19) == "3.5 MiB"
    with pytest.raises(ValueError):
        parse_size("10 parsecs")


def test_an_image_that_fits_is_pushed_and_counted(registry_factory, storage, tmp_path) -> None:
    cargohold_cli("quotas", "set", "acme/prod", "--bytes", "400KiB", storage=storage)
    server = start(registry_factory, storage)
    image = image_of("fits", 100 * KIB, 100 * KIB)

    push(server, tmp_path, "acme/prod/app", image, "1.0")

    layer_and_config_bytes = sum(b.size for b in image.blobs())
    assert used(storage) == (layer_and_config_bytes, 1)
    assert measured(storage) == (layer_and_config_bytes, 1)


def test_an_image_that_does_not_fit_is_refused_and_leaves_usage_unchanged(
    registry_factory, storage, tmp_path
) -> None:
    cargohold_cli("quotas", "set", "acme/prod", "--bytes", "300KiB", storage=storage)
    server = start(registry_factory, storage)
    push(server, tmp_path, "acme/prod/app", image_of("first", 150 * KIB), "1.0")
    before = used(storage)

    with pytest.raises(CommandError) as refused:
        push(server, tmp_path, "acme/prod/app", image_of("too-big", 200 * KIB), "2.0")

    assert "quota exceeded" in str(refused.value)
    assert used(storage) == before
    assert measured(storage) == before
    assert leftover_uploads(server) == []
    assert get_manifest(server.url, "acme/prod/app", "2.0").status_code == 404


def test_an_upload_with_a_known_length_is_refused_before_its_bytes_are_stored(
    registry_factory, storage
) -> None:
    cargohold_cli("quotas", "set", "acme/prod", "--bytes", "10KiB", storage=storage)
    server = start(registry_factory, storage)
    session = new_session()
    started = session.post(f"{server.url}/v2/acme/prod/app/blobs/uploads/")
    location = server.url + started.headers["Location"]

    resp = session.patch(
        location,
        data=b"x" * (20 * KIB),
        headers={"Content-Type": "application/octet-stream", "Content-Range": "0-20479"},
    )

    assert resp.status_code == 403
    error = resp.json()["errors"][0]
    assert error["code"] == "DENIED" and error["message"].startswith("quota exceeded: ")
    assert error["detail"]["limit"] == 10 * KIB and error["detail"]["used"] == 0
    assert session.get(location).status_code == 404
    assert leftover_uploads(server) == []


def test_a_layer_shared_by_two_images_counts_once(registry_factory, storage, tmp_path) -> None:
    cargohold_cli("quotas", "set", "acme/prod", "--bytes", "1GiB", storage=storage)
    server = start(registry_factory, storage)
    shared = make_random_layer(120 * KIB, seed="shared-base")
    first = image_of("one", 10 * KIB, shared=shared)
    second = image_of("two", 10 * KIB, shared=shared)

    push(server, tmp_path, "acme/prod/app", first, "1")
    push(server, tmp_path, "acme/prod/other", second, "1")

    unique = {b.digest: b.size for b in [*first.blobs(), *second.blobs()]}
    assert used(storage) == (sum(unique.values()), 2)
    assert measured(storage) == (sum(unique.values()), 2)


def test_the_image_count_quota_refuses_a_new_tag_but_not_a_moved_one(
    registry_factory, storage, tmp_path
) -> None:
    cargohold_cli("quotas", "set", "acme/prod", "--images", "1", storage=storage)
    server = start(registry_factory, storage)
    push(server, tmp_path, "acme/prod/app", image_of("count-1", KIB), "1")

    with pytest.raises(CommandError) as refused:
        push(server, tmp_path, "acme/prod/app", image_of("count-2", KIB), "2")
    push(server, tmp_path, "acme/prod/app", image_of("count-3", KIB), "1")

    assert "quota exceeded" in str(refused.value)
    assert used(storage)[1] == 1


def test_the_owner_quota_counts_every_registry_of_the_owner(
    registry_factory, storage, tmp_path
) -> None:
    cargohold_cli("quotas", "set", "acme", "--bytes", "300KiB", storage=storage)
    server = start(registry_factory, storage)
    push(server, tmp_path, "acme/prod/app", image_of("owner-1", 150 * KIB), "1")

    with pytest.raises(CommandError) as refused:
        push(server, tmp_path, "acme/staging/app", image_of("owner-2", 200 * KIB), "1")

    assert "owner acme" in str(refused.value)


def test_pulls_are_never_blocked_by_a_quota(registry_factory, storage, tmp_path) -> None:
    server = start(registry_factory, storage)
    image = image_of("pulled", 50 * KIB)
    push(server, tmp_path, "acme/prod/app", image, "1")
    cargohold_cli("quotas", "set", "acme/prod", "--bytes", "1KiB", storage=storage)

    skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{server.host}/acme/prod/app:1",
        f"oci:{tmp_path / 'pulled'}:1",
    )

    assert used(storage)[0] > parse_size("1KiB")


def test_a_streamed_upload_of_unknown_length_is_refused_and_deleted(
    registry_factory, storage
) -> None:
    cargohold_cli("quotas", "set", "acme/prod", "--bytes", "10KiB", storage=storage)
    server = start(registry_factory, storage)
    session = new_session()
    started = session.post(f"{server.url}/v2/acme/prod/app/blobs/uploads/")
    location = server.url + started.headers["Location"]

    def chunks() -> Iterator[bytes]:  # a generator body: sent chunked, no Content-Length
        for _ in range(20):
            yield b"y" * KIB

    resp = session.patch(
        location, data=chunks(), headers={"Content-Type": "application/octet-stream"}
    )

    assert resp.status_code == 403
    assert resp.json()["errors"][0]["message"].startswith("quota exceeded: ")
    assert session.get(location).status_code == 404
    assert leftover_uploads(server) == []
    assert used(storage) == (0, 0)
