"""Manifests and referrers: ``/v2/<name>/manifests/<reference>`` and ``/v2/<name>/referrers/<digest>``.

Every manifest kind the registry accepts (Docker schema 2, Docker manifest
list, OCI manifest, OCI index, OCI artifact) goes through PUT, GET, HEAD and
DELETE by tag and by digest; then each way a manifest push is refused.
"""

from __future__ import annotations

import json

import pytest

from tests.v2_support import (
    DOCKER_CONFIG,
    DOCKER_FOREIGN_LAYER,
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    EMPTY_CONFIG,
    EMPTY_DIGEST,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    SCHEMA1_SIGNED,
    STORAGES,
    assert_error,
    descriptor,
    digest_of,
    empty_config,
    encode,
    image_manifest,
    index_manifest,
    serve,
    subject_of,
)

REPO = "acme/dev/app"
OTHER = "acme/dev/other"
SBOM_TYPE = "application/vnd.example.sbom.v1+json"
SIGNATURE_TYPE = "application/vnd.example.signature.v1"
FOUR_MIB = 4 * 1024 * 1024
KINDS = ["docker-schema2", "docker-list", "oci-manifest", "oci-index", "oci-artifact"]


@pytest.fixture(params=STORAGES)
async def registry(request, tmp_path):
    async with serve(request.param, tmp_path) as client:
        yield client


@pytest.fixture
async def memory_registry(tmp_path):
    async with serve("memory", tmp_path) as client:
        yield client


@pytest.fixture
async def strict_registry(tmp_path):
    async with serve("memory", tmp_path, manifests={"strict_index": True}) as client:
        yield client


async def prepare(registry, kind: str, repo: str = REPO) -> tuple[bytes, str]:
    """Push everything a manifest of *kind* refers to; return its (bytes, media type)."""
    if kind == "docker-schema2":
        config = b'{"architecture":"amd64","os":"linux","docker":true}'
        layer = b"docker layer" * 100
        await registry.push_blob(repo, config)
        await registry.push_blob(repo, layer)
        document = image_manifest(
            descriptor(config, DOCKER_CONFIG),
            [descriptor(layer, DOCKER_LAYER)],
            media_type=DOCKER_MANIFEST,
        )
        return encode(document), DOCKER_MANIFEST
    if kind == "oci-manifest":
        config = b'{"architecture":"arm64","os":"linux"}'
        layer = b"oci layer" * 100
        await registry.push_blob(repo, config)
        await registry.push_blob(repo, layer)
        document = image_manifest(
            descriptor(config, OCI_CONFIG),
            [descriptor(layer, OCI_LAYER)],
            annotations={"org.opencontainers.image.title": "app"},
        )
        return encode(document), OCI_MANIFEST
    if kind == "docker-list":
        children = []
        for arch in ("amd64", "arm64"):
            digest, body = await registry.push_image(
                repo, f"child-{arch}", seed=arch, media_type=DOCKER_MANIFEST
            )
            children.append((digest, len(body), DOCKER_MANIFEST))
        return encode(index_manifest(children, media_type=DOCKER_LIST)), DOCKER_LIST
    if kind == "oci-index":
        children = []
        for arch in ("amd64", "arm64"):
            digest, body = await registry.push_image(repo, f"child-{arch}", seed=arch)
            children.append((digest, len(body), OCI_MANIFEST))
        return encode(index_manifest(children)), OCI_INDEX
    if kind == "oci-artifact":
        subject_digest, subject_body = await registry.push_image(repo, "subject", seed="subject")
        sbom = b'{"spdxVersion":"SPDX-2.3"}'
        await registry.push_blob(repo, EMPTY_CONFIG)
        await registry.push_blob(repo, sbom)
        document = image_manifest(
            empty_config(),
            [descriptor(sbom, "application/spdx+json")],
            artifactType=SBOM_TYPE,
            subject=subject_of(subject_digest, subject_body),
            annotations={"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
        )
        return encode(document), OCI_MANIFEST
    raise AssertionError(kind)


async def push_artifact(
    registry,
    subject: tuple[str, bytes],
    artifact_type: str,
    *,
    repo: str = REPO,
    reference: str | None = None,
    annotations: dict[str, str] | None = None,
    payload: bytes = b"artifact payload",
) -> tuple[str, bytes]:
    """Push an OCI artifact whose subject is *subject* (digest, bytes); return (digest, bytes)."""
    await registry.push_blob(repo, EMPTY_CONFIG)
    await registry.push_blob(repo, payload)
    fields = {"annotations": annotations} if annotations else {}
    document = image_manifest(
        empty_config(),
        [descriptor(payload, "application/octet-stream")],
        artifactType=artifact_type,
        subject=subject_of(*subject),
        **fields,
    )
    body = encode(document)
    return await registry.push_manifest(repo, reference or digest_of(body), document, OCI_MANIFEST)


# -- every kind: PUT / GET / HEAD / DELETE -------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_put_by_tag_answers_201_with_location_and_digest(registry, kind):
    body, media_type = await prepare(registry, kind)
    digest = digest_of(body)

    reply = await registry.put_manifest(REPO, "v1", body, media_type)

    assert reply.status == 201, reply.body
    assert reply.headers["Location"] == f"/v2/{REPO}/manifests/{digest}"
    assert reply.headers["Docker-Content-Digest"] == digest
    assert reply.headers["Docker-Distribution-API-Version"] == "registry/2.0"


@pytest.mark.parametrize("kind", KINDS)
async def test_get_by_tag_returns_the_exact_bytes_and_media_type(registry, kind):
    body, media_type = await prepare(registry, kind)
    await registry.put_manifest(REPO, "v1", body, media_type)

    reply = await registry.get(f"/v2/{REPO}/manifests/v1", headers={"Accept": media_type})

    assert reply.status == 200
    assert reply.body == body
    assert reply.content_type == media_type
    assert reply.headers["Docker-Content-Digest"] == digest_of(body)
    assert int(reply.headers["Content-Length"]) == len(body)


@pytest.mark.parametrize("kind", KINDS)
async def test_get_by_digest_returns_the_exact_bytes_and_media_type(registry, kind):
    body, media_type = await prepare(registry, kind)
    await registry.put_manifest(REPO, "v1", body, media_type)

    reply = await registry.get(f"/v2/{REPO}/manifests/{digest_of(body)}")

    assert reply.status == 200
    assert reply.body == body
    assert reply.content_type == media_type
    assert reply.headers["Docker-Content-Digest"] == digest_of(body)


@pytest.mark.parametrize("kind", KINDS)
async def test_head_by_tag_and_digest_answers_headers_only(registry, kind):
    body, media_type = await prepare(registry, kind)
    await registry.put_manifest(REPO, "v1", body, media_type)

    for reference in ("v1", digest_of(body)):
        reply = await registry.head(f"/v2/{REPO}/manifests/{reference}")
        assert reply.status == 200
        assert reply.body == b""
        assert reply.content_type == media_type
        assert reply.headers["Docker-Content-Digest"] == digest_of(body)
        assert int(reply.headers["Content-Length"]) == len(body)


@pytest.mark.parametrize("kind", KINDS)
async def test_put_by_digest_stores_an_untagged_manifest(registry, kind):
    body, media_type = await prepare(registry, kind)
    digest = digest_of(body)

    reply = await registry.put_manifest(REPO, digest, body, media_type)

    assert reply.status == 201
    assert reply.headers["Location"] == f"/v2/{REPO}/manifests/{digest}"
    assert reply.headers["Docker-Content-Digest"] == digest
    got = await registry.get(f"/v2/{REPO}/manifests/{digest}")
    assert got.body == body
    assert got.content_type == media_type


@pytest.mark.parametrize("kind", KINDS)
async def test_delete_by_digest_removes_the_manifest_and_its_tags(registry, kind):
    body, media_type = await prepare(registry, kind)
    digest = digest_of(body)
    await registry.put_manifest(REPO, "v1", body, media_type)
    await registry.put_manifest(REPO, "v1.0", body, media_type)

    reply = await registry.delete(f"/v2/{REPO}/manifests/{digest}")

    assert reply.status == 202
    assert_error(await registry.get(f"/v2/{REPO}/manifests/{digest}"), 404, "MANIFEST_UNKNOWN")
    assert_error(await registry.get(f"/v2/{REPO}/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    assert (await registry.head(f"/v2/{REPO}/manifests/v1.0")).status == 404
    tags = await registry.listed_tags(REPO)
    assert "v1" not in tags
    assert "v1.0" not in tags


@pytest.mark.parametrize("kind", KINDS)
async def test_delete_by_tag_removes_only_the_tag(registry, kind):
    body, media_type = await prepare(registry, kind)
    digest = digest_of(body)
    await registry.put_manifest(REPO, "v1", body, media_type)
    await registry.put_manifest(REPO, "stable", body, media_type)

    reply = await registry.delete(f"/v2/{REPO}/manifests/v1")

    assert reply.status == 202
    assert_error(await registry.get(f"/v2/{REPO}/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    assert (await registry.get(f"/v2/{REPO}/manifests/{digest}")).body == body
    assert (await registry.get(f"/v2/{REPO}/manifests/stable")).body == body
    tags = (await registry.get(f"/v2/{REPO}/tags/list")).json()["tags"]
    assert "v1" not in tags
    assert "stable" in tags


# -- reading --------------------------------------------------------------------------


async def test_get_unknown_tag_is_404_manifest_unknown(registry):
    await registry.push_image(REPO, "latest")

    reply = await registry.get(f"/v2/{REPO}/manifests/missing")

    assert_error(reply, 404, "MANIFEST_UNKNOWN")


async def test_get_manifest_of_unknown_repository_is_404(registry):
    reply = await registry.get("/v2/acme/dev/nothing/manifests/latest")

    assert reply.status == 404
    assert reply.json()["errors"][0]["code"] in {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"}


async def test_head_unknown_tag_is_404_without_body(registry):
    reply = await registry.head(f"/v2/{REPO}/manifests/missing")

    assert reply.status == 404
    assert reply.body == b""


async def test_get_unknown_digest_is_404_manifest_unknown(registry):
    await registry.push_image(REPO, "latest")

    reply = await registry.get(f"/v2/{REPO}/manifests/{digest_of(b'nothing')}")

    assert_error(reply, 404, "MANIFEST_UNKNOWN")


async def test_get_with_a_malformed_digest_reference_is_404_manifest_unknown(memory_registry):
    reply = await memory_registry.get(f"/v2/{REPO}/manifests/sha256:short")

    assert_error(reply, 404, "MANIFEST_UNKNOWN")


async def test_manifest_of_one_repository_is_unknown_in_another(registry):
    digest, _ = await registry.push_image(REPO, "latest")
    await registry.push_image(OTHER, "other", seed="other")

    by_digest = await registry.get(f"/v2/{OTHER}/manifests/{digest}")
    by_tag = await registry.get(f"/v2/{OTHER}/manifests/latest")

    assert_error(by_digest, 404, "MANIFEST_UNKNOWN")
    assert_error(by_tag, 404, "MANIFEST_UNKNOWN")


async def test_get_with_matching_if_none_match_is_304(registry):
    digest, _ = await registry.push_image(REPO, "latest")

    reply = await registry.get(
        f"/v2/{REPO}/manifests/latest", headers={"If-None-Match": f'"{digest}"'}
    )

    assert reply.status == 304
    assert reply.body == b""


async def test_manifest_pushed_without_content_type_or_media_type_is_an_oci_manifest(registry):
    config, layer = b'{"os":"linux"}', b"plain layer"
    await registry.push_blob(REPO, config)
    await registry.push_blob(REPO, layer)
    document = image_manifest(
        descriptor(config, OCI_CONFIG), [descriptor(layer, OCI_LAYER)], media_type=None
    )

    digest, body = await registry.push_manifest(REPO, "latest", document, None)

    reply = await registry.get(f"/v2/{REPO}/manifests/latest")
    assert reply.body == body
    assert reply.content_type == OCI_MANIFEST
    assert reply.headers["Docker-Content-Digest"] == digest


async def test_streamed_manifest_without_content_length_is_accepted(registry):
    body, media_type = await prepare(registry, "oci-manifest")

    async def stream():
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    reply = await registry.put(
        f"/v2/{REPO}/manifests/v1", data=stream(), headers={"Content-Type": media_type}
    )

    assert reply.status == 201
    assert (await registry.get(f"/v2/{REPO}/manifests/v1")).body == body


async def test_content_type_parameters_are_ignored_on_put(registry):
    body, _ = await prepare(registry, "oci-manifest")

    reply = await registry.put_manifest(REPO, "v1", body, f"{OCI_MANIFEST}; charset=utf-8")

    assert reply.status == 201
    assert (await registry.get(f"/v2/{REPO}/manifests/v1")).content_type == OCI_MANIFEST


# -- writing: tags, digests, subject -------------------------------------------------


async def test_pushing_a_new_manifest_under_a_tag_moves_the_tag(registry):
    old, _ = await registry.push_image(REPO, "latest", seed="old")
    new, new_body = await registry.push_image(REPO, "latest", seed="new")

    reply = await registry.get(f"/v2/{REPO}/manifests/latest")

    assert reply.headers["Docker-Content-Digest"] == new
    assert reply.body == new_body
    assert (await registry.get(f"/v2/{REPO}/manifests/{old}")).status == 200


async def test_pushing_the_same_manifest_twice_is_idempotent(registry):
    body, media_type = await prepare(registry, "oci-manifest")
    first = await registry.put_manifest(REPO, "v1", body, media_type)

    second = await registry.put_manifest(REPO, "v1", body, media_type)

    assert first.status == second.status == 201
    assert second.headers["Docker-Content-Digest"] == digest_of(body)
    assert (await registry.get(f"/v2/{REPO}/tags/list")).json()["tags"] == ["v1"]


async def test_put_by_digest_with_a_mismatched_body_is_400_digest_invalid(registry):
    body, media_type = await prepare(registry, "oci-manifest")
    wrong = digest_of(body + b" ")

    reply = await registry.put_manifest(REPO, wrong, body, media_type)

    assert_error(reply, 400, "DIGEST_INVALID")
    assert (await registry.get(f"/v2/{REPO}/manifests/{wrong}")).status == 404
    assert (await registry.get(f"/v2/{REPO}/manifests/{digest_of(body)}")).status == 404


async def test_put_by_sha512_digest_is_accepted_when_the_body_matches(registry):
    body, media_type = await prepare(registry, "oci-manifest")
    digest = digest_of(body, "sha512")

    reply = await registry.put_manifest(REPO, digest, body, media_type)

    assert reply.status == 201
    assert reply.headers["Docker-Content-Digest"] == digest
    assert reply.headers["Location"] == f"/v2/{REPO}/manifests/{digest}"


async def test_put_of_a_manifest_with_subject_answers_oci_subject(registry):
    body, media_type = await prepare(registry, "oci-artifact")
    subject = json.loads(body)["subject"]["digest"]

    reply = await registry.put_manifest(REPO, digest_of(body), body, media_type)

    assert reply.status == 201
    assert reply.headers["OCI-Subject"] == subject


async def test_put_of_an_index_with_subject_answers_oci_subject(registry):
    subject_digest, subject_body = await registry.push_image(REPO, "subject")
    child, child_body = await registry.push_image(REPO, "child", seed="child")
    document = index_manifest(
        [(child, len(child_body), OCI_MANIFEST)],
        artifactType=SIGNATURE_TYPE,
        subject=subject_of(subject_digest, subject_body),
    )

    reply = await registry.put_manifest(REPO, "sig", encode(document), OCI_INDEX)

    assert reply.status == 201
    assert reply.headers["OCI-Subject"] == subject_digest


async def test_put_of_a_manifest_without_subject_has_no_oci_subject(registry):
    body, media_type = await prepare(registry, "oci-manifest")

    reply = await registry.put_manifest(REPO, "v1", body, media_type)

    assert reply.status == 201
    assert "OCI-Subject" not in reply.headers


async def test_artifact_whose_subject_is_not_pushed_yet_is_accepted(registry):
    absent = (digest_of(b"future manifest"), b"future manifest")

    digest, _ = await push_artifact(registry, absent, SBOM_TYPE)

    assert (await registry.get(f"/v2/{REPO}/manifests/{digest}")).status == 200


async def test_artifact_with_empty_config_and_no_layers_is_accepted(registry):
    await registry.push_blob(REPO, EMPTY_CONFIG)
    document = image_manifest(
        empty_config(), [descriptor(EMPTY_CONFIG, OCI_EMPTY)], artifactType=SIGNATURE_TYPE
    )

    digest, body = await registry.push_manifest(REPO, "sig", document, OCI_MANIFEST)

    assert json.loads(body)["config"]["digest"] == EMPTY_DIGEST
    assert (await registry.get(f"/v2/{REPO}/manifests/{digest}")).body == body


@pytest.mark.parametrize(
    "tag",
    [
        pytest.param("-leading-dash", id="leading-dash"),
        pytest.param(".leading-dot", id="leading-dot"),
        pytest.param("a" * 129, id="too-long"),
        pytest.param("bad!tag", id="punctuation"),
        pytest.param("b%40d", id="percent-encoded-at"),
    ],
)
async def test_put_with_a_malformed_tag_is_400_tag_invalid(memory_registry, tag):
    body, media_type = await prepare(memory_registry, "oci-manifest")

    reply = await memory_registry.put_manifest(REPO, tag, body, media_type)

    assert_error(reply, 400, "TAG_INVALID")
    assert (await memory_registry.get(f"/v2/{REPO}/manifests/{digest_of(body)}")).status == 404


async def test_a_tag_of_128_characters_is_valid(memory_registry):
    tag = "t" * 128
    body, media_type = await prepare(memory_registry, "oci-manifest")

    reply = await memory_registry.put_manifest(REPO, tag, body, media_type)

    assert reply.status == 201
    assert (await memory_registry.get(f"/v2/{REPO}/manifests/{tag}")).body == body


async def test_put_with_a_malformed_digest_reference_is_400_digest_invalid(memory_registry):
    body, media_type = await prepare(memory_registry, "oci-manifest")

    reply = await memory_registry.put_manifest(REPO, "sha256:abc", body, media_type)

    assert_error(reply, 400, "DIGEST_INVALID")


# -- refused pushes -----------------------------------------------------------------


async def test_manifest_naming_an_unknown_layer_is_400_manifest_blob_unknown(registry):
    config = b'{"os":"linux"}'
    await registry.push_blob(REPO, config)
    missing = b"layer never pushed"
    document = image_manifest(descriptor(config, OCI_CONFIG), [descriptor(missing, OCI_LAYER)])

    reply = await registry.put_manifest(REPO, "latest", encode(document), OCI_MANIFEST)

    error = assert_error(reply, 400, "MANIFEST_BLOB_UNKNOWN")
    assert digest_of(missing) in json.dumps(error)


async def test_refused_manifest_leaves_nothing_visible(registry):
    config = b'{"os":"linux"}'
    await registry.push_blob(REPO, config)
    document = image_manifest(
        descriptor(config, OCI_CONFIG), [descriptor(b"never pushed", OCI_LAYER)]
    )
    body = encode(document)

    await registry.put_manifest(REPO, "latest", body, OCI_MANIFEST)

    assert_error(await registry.get(f"/v2/{REPO}/manifests/latest"), 404, "MANIFEST_UNKNOWN")
    by_digest = await registry.get(f"/v2/{REPO}/manifests/{digest_of(body)}")
    assert_error(by_digest, 404, "MANIFEST_UNKNOWN")
    assert_error(await registry.get(f"/v2/{REPO}/tags/list"), 404, "NAME_UNKNOWN")
    assert (await registry.get("/v2/_catalog")).json() == {"repositories": []}


async def test_manifest_naming_an_unknown_config_is_400_manifest_blob_unknown(registry):
    layer = b"layer"
    await registry.push_blob(REPO, layer)
    document = image_manifest(
        descriptor(b'{"missing":1}', OCI_CONFIG), [descriptor(layer, OCI_LAYER)]
    )

    reply = await registry.put_manifest(REPO, "latest", encode(document), OCI_MANIFEST)

    assert_error(reply, 400, "MANIFEST_BLOB_UNKNOWN")


async def test_manifest_naming_a_blob_of_another_repository_is_refused(registry):
    config, layer = b'{"os":"linux"}', b"layer only in other"
    await registry.push_blob(REPO, config)
    await registry.push_blob(OTHER, layer)
    document = image_manifest(descriptor(config, OCI_CONFIG), [descriptor(layer, OCI_LAYER)])

    reply = await registry.put_manifest(REPO, "latest", encode(document), OCI_MANIFEST)

    assert_error(reply, 400, "MANIFEST_BLOB_UNKNOWN")


async def test_foreign_layer_with_urls_is_accepted_without_the_blob(registry):
    config = b'{"os":"windows"}'
    await registry.push_blob(REPO, config)
    foreign = descriptor(
        b"windows base layer",
        DOCKER_FOREIGN_LAYER,
        urls=["https://mcr.example.com/windows/base.tar.gz"],
    )
    document = image_manifest(
        descriptor(config, DOCKER_CONFIG), [foreign], media_type=DOCKER_MANIFEST
    )

    digest, body = await registry.push_manifest(REPO, "windows", document, DOCKER_MANIFEST)

    assert (await registry.get(f"/v2/{REPO}/manifests/windows")).body == body
    assert (await registry.head(f"/v2/{REPO}/blobs/{foreign['digest']}")).status == 404
    assert digest == digest_of(body)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"this is not json", id="text"),
        pytest.param(b'{"schemaVersion": 2, "config": ', id="truncated"),
        pytest.param(b"[1, 2, 3]", id="array"),
        pytest.param(b"", id="empty"),
    ],
)
async def test_manifest_that_is_not_a_json_object_is_400_manifest_invalid(memory_registry, body):
    reply = await memory_registry.put_manifest(REPO, "latest", body, OCI_MANIFEST)

    assert_error(reply, 400, "MANIFEST_INVALID")


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"schemaVersion": 2, "mediaType": OCI_MANIFEST}, id="no-config-or-layers"),
        pytest.param({"schemaVersion": 3, "mediaType": OCI_MANIFEST}, id="schema-version-3"),
        pytest.param(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": "sha256:bad", "size": 2},
                "layers": [],
            },
            id="bad-config-digest",
        ),
    ],
)
async def test_manifest_with_invalid_structure_is_400_manifest_invalid(memory_registry, document):
    reply = await memory_registry.put_manifest(REPO, "latest", encode(document), OCI_MANIFEST)

    assert_error(reply, 400, "MANIFEST_INVALID")


def padded_manifest(size: int) -> bytes:
    """A valid empty-config OCI manifest of exactly *size* bytes (padded by an annotation)."""

    def build(pad: int) -> bytes:
        document = image_manifest(empty_config(), [], annotations={"pad": "x" * pad})
        return encode(document)

    body = build(size - len(build(0)))
    assert len(body) == size
    return body


async def test_manifest_over_4_mib_is_413_size_invalid(memory_registry):
    await memory_registry.push_blob(REPO, EMPTY_CONFIG)

    reply = await memory_registry.put_manifest(
        REPO, "big", padded_manifest(FOUR_MIB + 1), OCI_MANIFEST
    )

    assert_error(reply, 413, "SIZE_INVALID")
    assert (await memory_registry.get(f"/v2/{REPO}/manifests/big")).status == 404


async def test_streamed_manifest_over_4_mib_is_413_size_invalid(memory_registry):
    body = padded_manifest(FOUR_MIB + 1)

    async def stream():
        for start in range(0, len(body), 256 * 1024):
            yield body[start : start + 256 * 1024]

    reply = await memory_registry.put(
        f"/v2/{REPO}/manifests/big", data=stream(), headers={"Content-Type": OCI_MANIFEST}
    )

    assert_error(reply, 413, "SIZE_INVALID")


async def test_manifest_of_exactly_4_mib_is_accepted(memory_registry):
    await memory_registry.push_blob(REPO, EMPTY_CONFIG)
    body = padded_manifest(FOUR_MIB)

    reply = await memory_registry.put_manifest(REPO, "big", body, OCI_MANIFEST)

    assert reply.status == 201
    assert (await memory_registry.get(f"/v2/{REPO}/manifests/big")).body == body


async def test_media_type_field_disagreeing_with_content_type_is_400_manifest_invalid(registry):
    body, _ = await prepare(registry, "oci-manifest")

    reply = await registry.put_manifest(REPO, "latest", body, DOCKER_MANIFEST)

    assert_error(reply, 400, "MANIFEST_INVALID")


async def test_docker_manifest_sent_as_oci_is_400_manifest_invalid(registry):
    body, _ = await prepare(registry, "docker-schema2")

    reply = await registry.put_manifest(REPO, "latest", body, OCI_MANIFEST)

    assert_error(reply, 400, "MANIFEST_INVALID")


async def test_image_manifest_sent_with_an_index_content_type_is_400(registry):
    config, layer = b'{"os":"linux"}', b"layer"
    await registry.push_blob(REPO, config)
    await registry.push_blob(REPO, layer)
    document = image_manifest(
        descriptor(config, OCI_CONFIG), [descriptor(layer, OCI_LAYER)], media_type=None
    )

    reply = await registry.put_manifest(REPO, "latest", encode(document), OCI_INDEX)

    assert_error(reply, 400, "MANIFEST_INVALID")
    assert (await registry.get(f"/v2/{REPO}/manifests/latest")).status == 404


async def test_index_sent_with_an_image_manifest_content_type_is_400(registry):
    child, child_body = await registry.push_image(REPO, "child")
    document = index_manifest([(child, len(child_body), OCI_MANIFEST)], media_type=None)

    reply = await registry.put_manifest(REPO, "latest", encode(document), OCI_MANIFEST)

    assert_error(reply, 400, "MANIFEST_INVALID")


async def test_docker_manifest_without_media_type_field_is_400(registry):
    config, layer = b'{"os":"linux"}', b"layer"
    await registry.push_blob(REPO, config)
    await registry.push_blob(REPO, layer)
    document = image_manifest(
        descriptor(config, DOCKER_CONFIG), [descriptor(layer, DOCKER_LAYER)], media_type=None
    )

    reply = await registry.put_manifest(REPO, "latest", encode(document), DOCKER_MANIFEST)

    assert_error(reply, 400, "MANIFEST_INVALID")


async def test_unsupported_media_type_is_400_manifest_invalid(memory_registry):
    body, _ = await prepare(memory_registry, "oci-manifest")
    document = json.loads(body)
    document["mediaType"] = "application/vnd.example.unknown+json"

    reply = await memory_registry.put_manifest(
        REPO, "latest", encode(document), "application/vnd.example.unknown+json"
    )

    assert_error(reply, 400, "MANIFEST_INVALID")


SCHEMA1 = {
    "schemaVersion": 1,
    "name": REPO,
    "tag": "latest",
    "architecture": "amd64",
    "fsLayers": [{"blobSum": digest_of(b"layer")}],
    "history": [{"v1Compatibility": "{}"}],
    "signatures": [],
}


@pytest.mark.parametrize(
    "content_type",
    [
        SCHEMA1_SIGNED,
        "application/vnd.docker.distribution.manifest.v1+json",
        None,
        OCI_MANIFEST,
    ],
)
async def test_schema1_manifest_is_400_manifest_invalid_naming_schema_1(
    memory_registry, content_type
):
    reply = await memory_registry.put_manifest(REPO, "latest", encode(SCHEMA1), content_type)

    error = assert_error(reply, 400, "MANIFEST_INVALID")
    assert "schema 1" in error["message"].lower()


async def test_schema1_content_type_is_refused_whatever_the_body(registry):
    body, _ = await prepare(registry, "oci-manifest")

    reply = await registry.put_manifest(REPO, "latest", body, SCHEMA1_SIGNED)

    error = assert_error(reply, 400, "MANIFEST_INVALID")
    assert "schema 1" in error["message"].lower()


async def test_delete_of_unknown_tag_is_404_manifest_unknown(registry):
    await registry.push_image(REPO, "latest")

    reply = await registry.delete(f"/v2/{REPO}/manifests/missing")

    assert_error(reply, 404, "MANIFEST_UNKNOWN")


async def test_delete_of_unknown_digest_is_404_manifest_unknown(registry):
    await registry.push_image(REPO, "latest")

    reply = await registry.delete(f"/v2/{REPO}/manifests/{digest_of(b'none')}")

    assert_error(reply, 404, "MANIFEST_UNKNOWN")


async def test_delete_by_digest_leaves_other_manifests_and_tags(registry):
    gone, _ = await registry.push_image(REPO, "old", seed="old")
    kept, kept_body = await registry.push_image(REPO, "new", seed="new")

    await registry.delete(f"/v2/{REPO}/manifests/{gone}")

    assert (await registry.get(f"/v2/{REPO}/tags/list")).json()["tags"] == ["new"]
    assert (await registry.get(f"/v2/{REPO}/manifests/new")).body == kept_body
    assert (await registry.get(f"/v2/{REPO}/manifests/{kept}")).status == 200


# -- indexes: sparse and strict ------------------------------------------------------


async def test_sparse_index_is_accepted_by_default(registry):
    absent = [(digest_of(f"child {i}".encode()), 512, OCI_MANIFEST) for i in range(2)]
    body = encode(index_manifest(absent))

    reply = await registry.put_manifest(REPO, "multi", body, OCI_INDEX)

    assert reply.status == 201
    assert (await registry.get(f"/v2/{REPO}/manifests/multi")).body == body


async def test_sparse_docker_manifest_list_is_accepted_by_default(registry):
    absent = [(digest_of(b"child"), 512, DOCKER_MANIFEST)]
    body = encode(index_manifest(absent, media_type=DOCKER_LIST))

    reply = await registry.put_manifest(REPO, "multi", body, DOCKER_LIST)

    assert reply.status == 201


async def test_strict_index_refuses_children_missing_from_the_repository(strict_registry):
    present, present_body = await strict_registry.push_image(REPO, "amd64")
    absent = digest_of(b"arm64 manifest")
    body = encode(
        index_manifest([(present, len(present_body), OCI_MANIFEST), (absent, 100, OCI_MANIFEST)])
    )

    reply = await strict_registry.put_manifest(REPO, "multi", body, OCI_INDEX)

    error = assert_error(reply, 400, "MANIFEST_BLOB_UNKNOWN")
    assert absent in json.dumps(error)
    assert (await strict_registry.get(f"/v2/{REPO}/manifests/multi")).status == 404


async def test_strict_index_refuses_children_of_another_repository(strict_registry):
    child, child_body = await strict_registry.push_image(OTHER, "amd64")
    body = encode(index_manifest([(child, len(child_body), OCI_MANIFEST)]))

    reply = await strict_registry.put_manifest(REPO, "multi", body, OCI_INDEX)

    assert_error(reply, 400, "MANIFEST_BLOB_UNKNOWN")


async def test_strict_index_accepts_an_index_whose_children_are_present(strict_registry):
    body, media_type = await prepare(strict_registry, "oci-index")

    reply = await strict_registry.put_manifest(REPO, "multi", body, media_type)

    assert reply.status == 201


# -- referrers -------------------------------------------------------------------------


async def test_referrers_lists_manifests_whose_subject_is_the_digest(registry):
    subject = await registry.push_image(REPO, "latest")
    annotations = {"org.opencontainers.image.created": "2024-05-01T00:00:00Z"}
    sbom, sbom_body = await push_artifact(registry, subject, SBOM_TYPE, annotations=annotations)

    reply = await registry.get(f"/v2/{REPO}/referrers/{subject[0]}")

    assert reply.status == 200
    assert reply.content_type == OCI_INDEX
    assert reply.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    index = reply.json()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == OCI_INDEX
    assert index["manifests"] == [
        {
            "mediaType": OCI_MANIFEST,
            "digest": sbom,
            "size": len(sbom_body),
            "artifactType": SBOM_TYPE,
            "annotations": annotations,
        }
    ]


async def test_referrers_lists_every_referrer(registry):
    subject = await registry.push_image(REPO, "latest")
    sbom, _ = await push_artifact(registry, subject, SBOM_TYPE, payload=b"sbom")
    signature, _ = await push_artifact(registry, subject, SIGNATURE_TYPE, payload=b"sig")

    reply = await registry.get(f"/v2/{REPO}/referrers/{subject[0]}")

    found = {(d["digest"], d["artifactType"]) for d in reply.json()["manifests"]}
    assert found == {(sbom, SBOM_TYPE), (signature, SIGNATURE_TYPE)}
    assert "OCI-Filters-Applied" not in reply.headers


async def test_referrers_artifact_type_filter_is_applied_and_announced(registry):
    subject = await registry.push_image(REPO, "latest")
    await push_artifact(registry, subject, SBOM_TYPE, payload=b"sbom")
    signature, _ = await push_artifact(registry, subject, SIGNATURE_TYPE, payload=b"sig")

    reply = await registry.get(
        f"/v2/{REPO}/referrers/{subject[0]}", params={"artifactType": SIGNATURE_TYPE}
    )

    assert reply.status == 200
    assert reply.headers["OCI-Filters-Applied"] == "artifactType"
    assert [d["digest"] for d in reply.json()["manifests"]] == [signature]


async def test_referrers_filter_matching_nothing_is_an_empty_index(registry):
    subject = await registry.push_image(REPO, "latest")
    await push_artifact(registry, subject, SBOM_TYPE)

    reply = await registry.get(
        f"/v2/{REPO}/referrers/{subject[0]}", params={"artifactType": "application/none"}
    )

    assert reply.status == 200
    assert reply.json()["manifests"] == []
    assert reply.headers["OCI-Filters-Applied"] == "artifactType"


async def test_referrers_of_a_digest_without_referrers_is_an_empty_index(registry):
    subject, _ = await registry.push_image(REPO, "latest")

    reply = await registry.get(f"/v2/{REPO}/referrers/{subject}")

    assert reply.status == 200
    assert reply.content_type == OCI_INDEX
    assert reply.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


async def test_referrers_with_a_malformed_digest_is_400_digest_invalid(memory_registry):
    reply = await memory_registry.get(f"/v2/{REPO}/referrers/sha256:nothex")

    assert_error(reply, 400, "DIGEST_INVALID")


async def test_referrers_with_a_tag_instead_of_a_digest_is_400(memory_registry):
    reply = await memory_registry.get(f"/v2/{REPO}/referrers/latest")

    assert_error(reply, 400, "DIGEST_INVALID")


async def test_deleting_a_referrer_removes_it_from_the_list(registry):
    subject = await registry.push_image(REPO, "latest")
    sbom, _ = await push_artifact(registry, subject, SBOM_TYPE, payload=b"sbom")
    signature, _ = await push_artifact(registry, subject, SIGNATURE_TYPE, payload=b"sig")

    assert (await registry.delete(f"/v2/{REPO}/manifests/{sbom}")).status == 202

    reply = await registry.get(f"/v2/{REPO}/referrers/{subject[0]}")
    assert [d["digest"] for d in reply.json()["manifests"]] == [signature]


async def test_referrer_pushed_before_its_subject_is_listed(registry):
    future = (digest_of(b"not pushed yet"), b"not pushed yet")
    artifact, _ = await push_artifact(registry, future, SBOM_TYPE)

    reply = await registry.get(f"/v2/{REPO}/referrers/{future[0]}")

    assert [d["digest"] for d in reply.json()["manifests"]] == [artifact]


async def test_referrer_without_artifact_type_reports_its_config_media_type(registry):
    subject_digest, subject_body = await registry.push_image(REPO, "latest")
    config = b'{"signed": true}'
    config_type = "application/vnd.example.signature.config.v1+json"
    await registry.push_blob(REPO, config)
    document = image_manifest(
        descriptor(config, config_type),
        [],
        subject=subject_of(subject_digest, subject_body),
    )
    digest, _ = await registry.push_manifest(REPO, "sig", document, OCI_MANIFEST)

    reply = await registry.get(f"/v2/{REPO}/referrers/{subject_digest}")

    assert reply.json()["manifests"][0]["digest"] == digest
    assert reply.json()["manifests"][0]["artifactType"] == config_type


async def test_index_with_subject_is_listed_as_a_referrer(registry):
    subject = await registry.push_image(REPO, "latest")
    child, child_body = await registry.push_image(REPO, "child", seed="child")
    document = index_manifest(
        [(child, len(child_body), OCI_MANIFEST)],
        artifactType=SIGNATURE_TYPE,
        subject=subject_of(*subject),
    )
    digest, body = await registry.push_manifest(REPO, "sigs", document, OCI_INDEX)

    reply = await registry.get(f"/v2/{REPO}/referrers/{subject[0]}")

    assert reply.json()["manifests"] == [
        {
            "mediaType": OCI_INDEX,
            "digest": digest,
            "size": len(body),
            "artifactType": SIGNATURE_TYPE,
        }
    ]


async def test_referrers_are_per_repository(registry):
    subject = await registry.push_image(REPO, "latest")
    await push_artifact(registry, subject, SBOM_TYPE)

    reply = await registry.get(f"/v2/{OTHER}/referrers/{subject[0]}")

    assert reply.status == 200
    assert reply.json()["manifests"] == []
