"""Manifest and index PUTs: broken documents get 400 MANIFEST_INVALID-style errors, never 5xx.

Hypothesis starts from documents the registry accepts (the seeded image's manifest,
an index over it) and breaks them: a field replaced by a wrong type, a huge number
or a long string, a field removed or added, invalid UTF-8, a duplicated key, deep
nesting, a flipped bit, a cut. The answer is a 2xx (the damage left a valid
manifest) or a 4xx with the JSON error body, and a refused PUT stores nothing.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import broken_document, encode, header_text, mutated
from tests.fuzz.support import FUZZ, REPO, Target, assert_client_error, start_target

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPES = [
    OCI_MANIFEST,
    OCI_INDEX,
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
]

_tags = itertools.count()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    yield from start_target(tmp_path_factory, "fuzz-manifests")


def image_document(target: Target) -> dict[str, Any]:
    return json.loads(target.image.manifest)


def index_document(target: Target) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": target.image.digest,
                "size": target.image.size,
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    }


def put_manifest(target: Target, body: bytes, content_type: str | None) -> None:
    """PUT *body* under a fresh tag; the property: 2xx, or a 4xx that stored nothing."""
    tag = f"fuzz{next(_tags)}"
    headers = {} if content_type is None else {"Content-Type": content_type}
    before = target.files()
    resp = target.request(
        "PUT", f"/v2/{REPO}/manifests/{tag}", auth=target.writer, headers=headers, data=body
    )
    if resp.status_code != 201:
        assert_client_error(resp)
        assert target.files() == before
        missing = target.request("HEAD", f"/v2/{REPO}/manifests/{tag}", auth=target.writer)
        assert missing.status_code == 404
    target.assert_serving()


def test_the_unbroken_documents_are_accepted(target: Target) -> None:
    """The starting points are valid: what the strategies break, they break from here."""
    for document, media_type in ((image_document(target), OCI_MANIFEST),):
        resp = target.request(
            "PUT",
            f"/v2/{REPO}/manifests/fuzz-ok",
            auth=target.writer,
            headers={"Content-Type": media_type},
            data=encode(document),
        )
        assert resp.status_code == 201, resp.text
    resp = target.request(
        "PUT",
        f"/v2/{REPO}/manifests/fuzz-ok-index",
        auth=target.writer,
        headers={"Content-Type": OCI_INDEX},
        data=encode(index_document(target)),
    )
    assert resp.status_code == 201, resp.text


@FUZZ
@given(data=st.data())
def test_broken_image_manifest_is_refused_or_stored_whole(
    target: Target, data: st.DataObject
) -> None:
    body = data.draw(broken_document(image_document(target)))
    put_manifest(target, body, data.draw(st.sampled_from([OCI_MANIFEST, None])))


@FUZZ
@given(data=st.data())
def test_broken_index_is_refused_or_stored_whole(target: Target, data: st.DataObject) -> None:
    body = data.draw(broken_document(index_document(target)))
    put_manifest(target, body, data.draw(st.sampled_from([OCI_INDEX, None])))


content_types = st.one_of(
    st.none(),
    st.sampled_from(MANIFEST_TYPES),
    st.sampled_from(["application/json", "text/plain", "", ";", "application/octet-stream"]),
    st.sampled_from(MANIFEST_TYPES).map(lambda t: t + "; charset=utf-8"),
    st.sampled_from(MANIFEST_TYPES).map(str.upper),
    header_text,
)


@FUZZ
@given(data=st.data())
def test_manifest_with_any_content_type_is_refused_or_stored(
    target: Target, data: st.DataObject
) -> None:
    document = data.draw(st.sampled_from([image_document(target), index_document(target)]))
    if data.draw(st.booleans()):
        document = data.draw(mutated(document))
    put_manifest(target, encode(document), data.draw(content_types))


# -- the cases found by hand before the fuzzing existed ----------------------------------------


def _refused(target: Target, body: bytes) -> list[dict[str, Any]]:
    before = target.files()
    resp = target.request(
        "PUT",
        f"/v2/{REPO}/manifests/fuzz-known",
        auth=target.writer,
        headers={"Content-Type": OCI_MANIFEST},
        data=body,
    )
    errors = assert_client_error(resp)
    assert resp.status_code == 400
    assert target.files() == before
    target.assert_serving()
    return errors


def test_manifest_that_is_not_utf8_is_manifest_invalid(target: Target) -> None:
    body = encode(image_document(target)).replace(b'"schemaVersion"', b'"schema\xffVersion"')
    assert _refused(target, body)[0]["code"] == "MANIFEST_INVALID"


def test_manifest_with_invalid_utf8_inside_an_annotation_is_manifest_invalid(
    target: Target,
) -> None:
    document = image_document(target)
    document["annotations"] = {"note": "PLACEHOLDER"}
    body = encode(document).replace(b"PLACEHOLDER", b"\xc3\x28")
    assert _refused(target, body)[0]["code"] == "MANIFEST_INVALID"


@pytest.mark.parametrize("opener", [b"[", b'{"a":'], ids=["arrays", "objects"])
def test_deeply_nested_manifest_is_manifest_invalid(target: Target, opener: bytes) -> None:
    depth = 100_000
    closer = b"]" if opener == b"[" else b"}"
    body = b'{"schemaVersion":2,"x":' + opener * depth + b"1" + closer * depth + b"}"
    assert _refused(target, body)[0]["code"] == "MANIFEST_INVALID"


def test_manifest_with_a_duplicated_key_is_manifest_invalid(target: Target) -> None:
    body = encode(image_document(target)).replace(b"{", b'{"schemaVersion":2,', 1)
    assert _refused(target, body)[0]["code"] == "MANIFEST_INVALID"


def test_descriptor_size_beyond_int64_is_manifest_invalid(target: Target) -> None:
    document = image_document(target)
    document["layers"][0]["size"] = 2**63
    assert _refused(target, encode(document))[0]["code"] == "MANIFEST_INVALID"
