"""Parsing and validating manifests, indexes and artifacts."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from registry_core import mediatypes as mt
from registry_core.digest import Digest
from registry_core.errors import ManifestInvalid, TooLarge
from registry_core.manifest import detect_media_type, parse_manifest

CONFIG = Digest.of(b"config")
LAYER_A = Digest.of(b"layer a")
LAYER_B = Digest.of(b"layer b")
FOREIGN = Digest.of(b"foreign layer")
CHILD_AMD64 = Digest.of(b"child amd64")
CHILD_ARM64 = Digest.of(b"child arm64")
SUBJECT = Digest.of(b"subject manifest")


def descriptor(media_type: str, digest: Digest, size: int = 10, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": str(digest), "size": size, **extra}


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def image(media_type: str | None = mt.OCI_MANIFEST, **extra: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "config": descriptor("application/vnd.oci.image.config.v1+json", CONFIG),
        "layers": [
            descriptor("application/vnd.oci.image.layer.v1.tar+gzip", LAYER_A),
            descriptor("application/vnd.oci.image.layer.v1.tar+gzip", LAYER_B),
        ],
        **extra,
    }
    if media_type is not None:
        document["mediaType"] = media_type
    return document


def docker_image() -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST,
        "config": descriptor("application/vnd.docker.container.image.v1+json", CONFIG),
        "layers": [
            descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip", LAYER_A),
        ],
    }


def index(media_type: str | None = mt.OCI_INDEX, child_type: str = mt.OCI_MANIFEST) -> dict:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "manifests": [
            descriptor(child_type, CHILD_AMD64, platform={"architecture": "amd64", "os": "linux"}),
            descriptor(
                child_type,
                CHILD_ARM64,
                platform={"architecture": "arm64", "os": "linux", "variant": "v8"},
            ),
        ],
    }
    if media_type is not None:
        document["mediaType"] = media_type
    return document


def artifact() -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom.v1",
        "config": descriptor(mt.OCI_EMPTY, Digest.of(b"{}"), size=2, data="e30="),
        "layers": [descriptor("application/spdx+json", LAYER_A)],
        "subject": descriptor(mt.OCI_MANIFEST, SUBJECT),
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }


# -- each kind --------------------------------------------------------------------


def test_docker_schema2_manifest_is_parsed() -> None:
    parsed = parse_manifest(encode(docker_image()), mt.DOCKER_MANIFEST)
    assert parsed.media_type == mt.DOCKER_MANIFEST
    assert parsed.blobs == (CONFIG, LAYER_A)
    assert parsed.manifests == ()
    assert parsed.is_index is False


def test_docker_manifest_list_is_parsed() -> None:
    body = encode(index(mt.DOCKER_MANIFEST_LIST, child_type=mt.DOCKER_MANIFEST))
    parsed = parse_manifest(body, mt.DOCKER_MANIFEST_LIST)
    assert parsed.media_type == mt.DOCKER_MANIFEST_LIST
    assert parsed.is_index is True


def test_oci_manifest_is_parsed() -> None:
    parsed = parse_manifest(encode(image()), mt.OCI_MANIFEST)
    assert parsed.media_type == mt.OCI_MANIFEST
    assert parsed.blobs == (CONFIG, LAYER_A, LAYER_B)
    assert parsed.subject is None


def test_oci_index_is_parsed() -> None:
    parsed = parse_manifest(encode(index()), mt.OCI_INDEX)
    assert parsed.media_type == mt.OCI_INDEX
    assert parsed.is_index is True


def test_parsed_manifest_digest_and_size_are_of_the_exact_bytes() -> None:
    body = encode(image())
    parsed = parse_manifest(body, mt.OCI_MANIFEST)
    assert parsed.digest == Digest.of(body)
    assert parsed.size == len(body)


def test_index_children_are_its_manifests() -> None:
    parsed = parse_manifest(encode(index()), mt.OCI_INDEX)
    assert parsed.manifests == (CHILD_AMD64, CHILD_ARM64)


def test_index_has_no_blobs() -> None:
    assert parse_manifest(encode(index()), mt.OCI_INDEX).blobs == ()


def test_artifact_keeps_its_artifact_type() -> None:
    parsed = parse_manifest(encode(artifact()), mt.OCI_MANIFEST)
    assert parsed.artifact_type == "application/vnd.example.sbom.v1"


def test_artifact_subject_is_parsed() -> None:
    assert parse_manifest(encode(artifact()), mt.OCI_MANIFEST).subject == SUBJECT


def test_artifact_annotations_are_kept() -> None:
    parsed = parse_manifest(encode(artifact()), mt.OCI_MANIFEST)
    assert parsed.annotations == {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}


def test_artifact_embedded_empty_config_is_not_a_required_blob() -> None:
    assert parse_manifest(encode(artifact()), mt.OCI_MANIFEST).blobs == (LAYER_A,)


def test_empty_config_without_data_is_a_required_blob() -> None:
    document = artifact()
    del document["config"]["data"]
    assert Digest.of(b"{}") in parse_manifest(encode(document), mt.OCI_MANIFEST).blobs


def test_artifact_type_falls_back_to_the_config_media_type() -> None:
    parsed = parse_manifest(encode(image()), mt.OCI_MANIFEST)
    assert parsed.artifact_type == "application/vnd.oci.image.config.v1+json"


def test_index_with_subject_and_artifact_type_is_parsed() -> None:
    document = index()
    document["artifactType"] = "application/vnd.example.bundle"
    document["subject"] = descriptor(mt.OCI_MANIFEST, SUBJECT)
    parsed = parse_manifest(encode(document), mt.OCI_INDEX)
    assert (parsed.subject, parsed.artifact_type) == (SUBJECT, "application/vnd.example.bundle")


def test_layers_with_urls_are_not_required_blobs() -> None:
    document = image()
    document["layers"].append(
        descriptor(
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            FOREIGN,
            urls=["https://example.com/layer.tar.gz"],
        )
    )
    parsed = parse_manifest(encode(document), mt.OCI_MANIFEST)
    assert FOREIGN not in parsed.blobs
    assert parsed.blobs == (CONFIG, LAYER_A, LAYER_B)


def test_manifest_without_media_type_or_header_is_an_oci_manifest() -> None:
    parsed = parse_manifest(encode(image(media_type=None)), None)
    assert parsed.media_type == mt.OCI_MANIFEST


def test_index_without_media_type_or_header_is_an_oci_index() -> None:
    parsed = parse_manifest(encode(index(media_type=None)), None)
    assert parsed.media_type == mt.OCI_INDEX


def test_content_type_names_the_kind_when_the_body_does_not() -> None:
    parsed = parse_manifest(encode(image(media_type=None)), mt.OCI_MANIFEST)
    assert parsed.media_type == mt.OCI_MANIFEST


def test_content_type_parameters_are_ignored() -> None:
    parsed = parse_manifest(encode(image()), f"{mt.OCI_MANIFEST}; charset=utf-8")
    assert parsed.media_type == mt.OCI_MANIFEST


# -- refusals ---------------------------------------------------------------------


def test_schema1_body_is_refused_with_a_clear_message() -> None:
    body = encode(
        {
            "schemaVersion": 1,
            "name": "acme/prod/app",
            "tag": "latest",
            "fsLayers": [{"blobSum": str(LAYER_A)}],
        }
    )
    with pytest.raises(ManifestInvalid, match="schema 1"):
        parse_manifest(body, mt.DOCKER_SCHEMA1_SIGNED)


def test_schema1_content_type_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ManifestInvalid, match="schema 1"):
        parse_manifest(encode(image()), mt.DOCKER_SCHEMA1)


def test_schema1_body_without_content_type_is_refused() -> None:
    body = encode({"schemaVersion": 1, "fsLayers": [{"blobSum": str(LAYER_A)}]})
    with pytest.raises(ManifestInvalid, match="schema 1"):
        parse_manifest(body, None)


def test_media_type_and_content_type_mismatch_is_refused() -> None:
    with pytest.raises(ManifestInvalid, match="does not match"):
        parse_manifest(encode(image()), mt.DOCKER_MANIFEST)


def test_docker_manifest_without_its_media_type_field_is_refused() -> None:
    document = docker_image()
    del document["mediaType"]
    with pytest.raises(ManifestInvalid, match="mediaType"):
        parse_manifest(encode(document), mt.DOCKER_MANIFEST)


def test_unknown_media_type_is_refused() -> None:
    with pytest.raises(ManifestInvalid, match="unsupported manifest media type"):
        parse_manifest(encode(image(media_type="application/json")), None)


@pytest.mark.parametrize("body", [b"not json", b"", b"[1, 2]", b'"a string"', b"{"])
def test_body_that_is_not_a_json_object_is_refused(body: bytes) -> None:
    with pytest.raises(ManifestInvalid):
        parse_manifest(body, mt.OCI_MANIFEST)


def test_schema_version_other_than_2_is_refused() -> None:
    document = image()
    document["schemaVersion"] = 3
    with pytest.raises(ManifestInvalid, match="schemaVersion"):
        parse_manifest(encode(document), mt.OCI_MANIFEST)


def test_manifest_over_4_mib_is_too_large() -> None:
    document = image(annotations={"padding": "x" * mt.MAX_MANIFEST_SIZE})
    with pytest.raises(TooLarge) as caught:
        parse_manifest(encode(document), mt.OCI_MANIFEST)
    assert caught.value.status == 413
    assert caught.value.code == "SIZE_INVALID"


def test_manifest_of_exactly_the_limit_is_accepted() -> None:
    document = image(annotations={"padding": ""})
    room = mt.MAX_MANIFEST_SIZE - len(encode(document))
    document["annotations"]["padding"] = "x" * room
    body = encode(document)
    assert len(body) == mt.MAX_MANIFEST_SIZE
    assert parse_manifest(body, mt.OCI_MANIFEST).size == mt.MAX_MANIFEST_SIZE


def test_a_smaller_max_size_is_honoured() -> None:
    with pytest.raises(TooLarge):
        parse_manifest(encode(image()), mt.OCI_MANIFEST, max_size=100)


@pytest.mark.parametrize("field", ["config", "layers", "schemaVersion"])
def test_image_manifest_missing_a_required_field_is_refused(field: str) -> None:
    document = image()
    del document[field]
    with pytest.raises(ManifestInvalid):
        parse_manifest(encode(document), mt.OCI_MANIFEST)


def test_index_without_manifests_is_refused() -> None:
    document = index()
    del document["manifests"]
    with pytest.raises(ManifestInvalid):
        parse_manifest(encode(document), mt.OCI_INDEX)


@pytest.mark.parametrize("field", ["mediaType", "digest", "size"])
def test_descriptor_missing_a_field_is_refused(field: str) -> None:
    document = image()
    del document["layers"][0][field]
    with pytest.raises(ManifestInvalid):
        parse_manifest(encode(document), mt.OCI_MANIFEST)


def test_bad_config_digest_is_refused_naming_the_config() -> None:
    document = image()
    document["config"]["digest"] = "sha256:nothex"
    with pytest.raises(ManifestInvalid, match="config"):
        parse_manifest(encode(document), mt.OCI_MANIFEST)


def test_bad_layer_digest_is_refused_naming_the_layer() -> None:
    document = image()
    document["layers"][1]["digest"] = "md5:" + "0" * 32
    with pytest.raises(ManifestInvalid, match=r"layers\[1\]"):
        parse_manifest(encode(document), mt.OCI_MANIFEST)


def test_bad_child_digest_in_an_index_is_refused() -> None:
    document = index()
    document["manifests"][0]["digest"] = "sha256:" + "A" * 64
    with pytest.raises(ManifestInvalid, match=r"manifests\[0\]"):
        parse_manifest(encode(document), mt.OCI_INDEX)


def test_bad_subject_digest_is_refused() -> None:
    document = artifact()
    document["subject"]["digest"] = "sha256:short"
    with pytest.raises(ManifestInvalid, match="subject"):
        parse_manifest(encode(document), mt.OCI_MANIFEST)


def test_negative_descriptor_size_is_refused() -> None:
    document = image()
    document["layers"][0]["size"] = -1
    with pytest.raises(ManifestInvalid, match="negative"):
        parse_manifest(encode(document), mt.OCI_MANIFEST)


def test_embedded_data_that_does_not_match_its_digest_is_refused() -> None:
    document = artifact()
    document["config"]["data"] = base64.b64encode(b"[]").decode()
    with pytest.raises(ManifestInvalid, match="data"):
        parse_manifest(encode(document), mt.OCI_MANIFEST)


def test_config_with_embedded_data_still_needs_a_valid_digest() -> None:
    document = artifact()
    document["config"]["digest"] = "sha256:nothex"
    with pytest.raises(ManifestInvalid, match="config"):
        parse_manifest(encode(document), mt.OCI_MANIFEST)


def test_layers_that_are_not_a_list_are_refused() -> None:
    document = image()
    document["layers"] = {"not": "a list"}
    with pytest.raises(ManifestInvalid):
        parse_manifest(encode(document), mt.OCI_MANIFEST)


# -- detect_media_type -------------------------------------------------------------


def test_detect_media_type_reads_the_media_type_field() -> None:
    assert detect_media_type(encode(docker_image())) == mt.DOCKER_MANIFEST


def test_detect_media_type_of_an_untyped_manifest_is_oci_manifest() -> None:
    assert detect_media_type(encode(image(media_type=None))) == mt.OCI_MANIFEST


def test_detect_media_type_of_an_untyped_index_is_oci_index() -> None:
    assert detect_media_type(encode(index(media_type=None))) == mt.OCI_INDEX


def test_detect_media_type_of_schema1_is_the_signed_type() -> None:
    body = encode({"schemaVersion": 1, "fsLayers": []})
    assert detect_media_type(body) == mt.DOCKER_SCHEMA1_SIGNED


def test_detect_media_type_of_garbage_falls_back_to_oci_manifest() -> None:
    assert detect_media_type(b"\x00 not json") == mt.OCI_MANIFEST
