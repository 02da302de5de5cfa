"""Immutable tags against skopeo pushes: a matching tag cannot move or be deleted once set.

The rule is set with ``cargohold immutable set`` on the server's storage before the
server starts (so no settings cache is in the way); pushes go through skopeo, deletes
through the plain HTTP API, as a client sends them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import CommandError, sample_image, skopeo, write_oci_layout
from tests.helpers.registry_api import get_manifest, new_session
from tests.helpers.server import RegistryServer
from tests.helpers.tenants import cargohold_cli

pytestmark = pytest.mark.clients

REPO = "acme/prod/app"


@pytest.fixture
def server(registry_factory, tmp_path_factory) -> RegistryServer:
    store = tmp_path_factory.mktemp("immutable-store")
    storage = f"file://{store}"
    cargohold_cli("immutable", "set", "acme/prod", "v*", "stable", storage=storage)
    return registry_factory(storage_url=storage)


def push(server: RegistryServer, tmp_path: Path, seed: str, tag: str) -> str:
    """Push the image built from *seed* with skopeo under *tag*; return its digest."""
    layout = tmp_path / f"layout-{seed}"
    digest_file = layout / "pushed-digest"
    if not digest_file.exists():  # the same seed pushes the very same image again
        image = sample_image(seed)
        write_oci_layout(layout, image, "src")
        digest_file.write_text(image.digest)
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        f"oci:{layout}:src",
        f"docker://{server.host}/{REPO}:{tag}",
    )
    return digest_file.read_text()


def served_digest(server: RegistryServer, tag: str) -> str:
    resp = get_manifest(server.url, REPO, tag)
    assert resp.status_code == 200, resp.text
    return resp.headers["Docker-Content-Digest"]


def test_pushing_another_image_under_an_immutable_tag_is_refused_naming_the_rule(
    server: RegistryServer, tmp_path: Path
) -> None:
    first = push(server, tmp_path, "immutable-first", "v1.0")

    with pytest.raises(CommandError) as refused:
        push(server, tmp_path, "immutable-second", "v1.0")

    assert "immutable" in str(refused.value) and "v*" in str(refused.value)
    assert served_digest(server, "v1.0") == first


def test_the_refusal_is_denied_with_a_json_error_body(
    server: RegistryServer, tmp_path: Path
) -> None:
    push(server, tmp_path, "immutable-json", "stable")
    other = sample_image("immutable-json-other")
    session = new_session()
    for blob in other.blobs():
        session.post(
            f"{server.url}/v2/{REPO}/blobs/uploads/?digest={blob.digest}", data=blob.data
        ).raise_for_status()

    resp = session.put(
        f"{server.url}/v2/{REPO}/manifests/stable",
        data=other.manifest,
        headers={"Content-Type": other.media_type},
    )

    assert resp.status_code == 403
    error = resp.json()["errors"][0]
    assert error["code"] == "DENIED"
    assert "'stable'" in error["message"] and "rule" in error["message"]


def test_re_pushing_the_same_image_under_an_immutable_tag_succeeds(
    server: RegistryServer, tmp_path: Path
) -> None:
    first = push(server, tmp_path, "immutable-same", "v2.0")

    again = push(server, tmp_path, "immutable-same", "v2.0")

    assert again == first
    assert served_digest(server, "v2.0") == first


def test_deleting_an_immutable_tag_is_refused(server: RegistryServer, tmp_path: Path) -> None:
    digest = push(server, tmp_path, "immutable-delete", "v3.0")
    session = new_session()

    by_tag = session.delete(f"{server.url}/v2/{REPO}/manifests/v3.0")
    by_digest = session.delete(f"{server.url}/v2/{REPO}/manifests/{digest}")

    assert by_tag.status_code == 403 and by_tag.json()["errors"][0]["code"] == "DENIED"
    assert by_digest.status_code == 403 and by_digest.json()["errors"][0]["code"] == "DENIED"
    assert served_digest(server, "v3.0") == digest


def test_tags_not_matching_a_pattern_still_move(server: RegistryServer, tmp_path: Path) -> None:
    push(server, tmp_path, "mutable-first", "latest")

    second = push(server, tmp_path, "mutable-second", "latest")

    assert served_digest(server, "latest") == second


def test_attachment_tags_are_never_immutable(server: RegistryServer, tmp_path: Path) -> None:
    cargohold_cli("immutable", "set", "acme/prod", "*", storage=f"file://{server.storage_path}")
    subject = push(server, tmp_path, "attached-subject", "v9")
    signature_tag = subject.replace(":", "-") + ".sig"

    push(server, tmp_path, "attached-sig-1", signature_tag)
    second = push(server, tmp_path, "attached-sig-2", signature_tag)

    assert served_digest(server, signature_tag) == second
