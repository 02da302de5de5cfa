"""The library used as a library: blobs, uploads, manifests, tags and catalog, no HTTP.

Every test runs on the local and the memory driver.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from drivers.local import LocalDriver
from drivers.memory import MemoryDriver
from registry_core import Digest, Registry
from registry_core import mediatypes as mt
from registry_core.errors import (
    BlobUnknown,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestUnknown,
    NameInvalid,
    RangeInvalid,
    SizeInvalid,
)
from registry_core.storage.driver import StorageDriver

REPO = "acme/prod/app"
OTHER = "acme/prod/other"
ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


class Storage:
    """One storage backend, and a way to open a fresh Registry (a new process) over it."""

    def __init__(self, make_driver: Callable[[], StorageDriver]) -> None:
        self._make_driver = make_driver
        self.registry = Registry(make_driver())

    def reopen(self) -> Registry:
        return Registry(self._make_driver())


@pytest.fixture(params=["local", "memory"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return Storage(lambda: LocalDriver(str(tmp_path / "registry")))
    memory = MemoryDriver()
    return Storage(lambda: memory)


@pytest.fixture
def registry(storage: Storage) -> Registry:
    return storage.registry


async def push_blob(registry: Registry, repo: str, data: bytes) -> Digest:
    async with registry.repository(repo).blobs.upload() as upload:
        await upload.write(data)
        return (await upload.commit(Digest.of(data))).digest


async def read_blob(registry: Registry, repo: str, digest: Digest) -> bytes:
    return b"".join([chunk async for chunk in registry.repository(repo).blobs.read(digest)])


def oci_manifest(config: Digest, layers: list[Digest], **extra: Any) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": str(config),
                "size": 2,
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": str(d), "size": 1}
                for d in layers
            ],
            **extra,
        }
    ).encode()


async def push_image(registry: Registry, repo: str, tag: str | None = None, seed: str = "") -> Any:
    config = await push_blob(registry, repo, b"{}")
    layer = await push_blob(registry, repo, f"layer {seed}".encode())
    body = oci_manifest(config, [layer], annotations={"seed": seed})
    return await registry.repository(repo).manifests.put(body, mt.OCI_MANIFEST, tag=tag)


# -- blobs and uploads ----------------------------------------------------------------


async def test_committed_upload_is_readable_in_its_repository(registry: Registry) -> None:
    digest = await push_blob(registry, REPO, b"layer bytes")
    assert await read_blob(registry, REPO, digest) == b"layer bytes"


async def test_committed_upload_reports_its_size(registry: Registry) -> None:
    digest = await push_blob(registry, REPO, b"layer bytes")
    assert (await registry.repository(REPO).blobs.stat(digest)).size == len(b"layer bytes")


async def test_committed_upload_is_not_visible_in_another_repository(registry: Registry) -> None:
    digest = await push_blob(registry, REPO, b"private layer")
    with pytest.raises(BlobUnknown):
        await registry.repository(OTHER).blobs.stat(digest)


async def test_upload_in_several_writes_is_one_blob(registry: Registry) -> None:
    parts = [b"a" * 1000, b"b" * (2 << 20), b"c" * 77]
    repo = registry.repository(REPO)
    async with repo.blobs.upload() as upload:
        for part in parts:
            await upload.write(part)
        info = await upload.commit(Digest.of(b"".join(parts)))
    assert info.size == sum(map(len, parts))
    assert await read_blob(registry, REPO, info.digest) == b"".join(parts)


async def test_blob_is_readable_from_an_offset(registry: Registry) -> None:
    digest = await push_blob(registry, REPO, b"0123456789")
    chunks = [c async for c in registry.repository(REPO).blobs.read(digest, offset=4, length=3)]
    assert b"".join(chunks) == b"456"


async def test_digest_mismatch_is_digest_invalid(registry: Registry) -> None:
    upload = await registry.repository(REPO).blobs.start_upload()
    await upload.write(b"actual bytes")
    with pytest.raises(DigestInvalid):
        await upload.commit(Digest.of(b"claimed bytes"))


async def test_digest_mismatch_makes_nothing_visible(registry: Registry) -> None:
    upload = await registry.repository(REPO).blobs.start_upload()
    await upload.write(b"actual bytes")
    with pytest.raises(DigestInvalid):
        await upload.commit(Digest.of(b"claimed bytes"))
    for digest in (Digest.of(b"claimed bytes"), Digest.of(b"actual bytes")):
        assert not await registry.blob_store.exists(digest)
        assert not await registry.repository(REPO).blobs.exists(digest)


async def test_upload_can_commit_after_a_digest_mismatch(registry: Registry) -> None:
    upload = await registry.repository(REPO).blobs.start_upload()
    await upload.write(b"actual bytes")
    with pytest.raises(DigestInvalid):
        await upload.commit(Digest.of(b"claimed bytes"))
    info = await upload.commit(Digest.of(b"actual bytes"))
    assert await read_blob(registry, REPO, info.digest) == b"actual bytes"


async def test_size_mismatch_is_size_invalid_and_makes_nothing_visible(
    registry: Registry,
) -> None:
    upload = await registry.repository(REPO).blobs.start_upload()
    await upload.write(b"twelve bytes")
    with pytest.raises(SizeInvalid):
        await upload.commit(Digest.of(b"twelve bytes"), size=13)
    assert not await registry.blob_store.exists(Digest.of(b"twelve bytes"))


async def test_commit_with_the_right_size_succeeds(registry: Registry) -> None:
    upload = await registry.repository(REPO).blobs.start_upload()
    await upload.write(b"twelve bytes")
    info = await upload.commit(Digest.of(b"twelve bytes"), size=12)
    assert info.size == 12


async def test_sha512_commit_is_verified(registry: Registry) -> None:
    upload = await registry.repository(REPO).blobs.start_upload()
    await upload.write(b"hashed twice")
    info = await upload.commit(Digest.of(b"hashed twice", "sha512"))
    assert await read_blob(registry, REPO, info.digest) == b"hashed twice"


async def test_upload_resumes_from_a_new_registry_instance(storage: Storage) -> None:
    first_part, second_part = b"first part " * 1000, b"second part" * 1000
    upload = await storage.registry.repository(REPO).blobs.start_upload()
    await upload.write(first_part)

    resumed_registry = storage.reopen()
    resumed = await resumed_registry.repository(REPO).blobs.get_upload(upload.id)
    assert resumed.size == len(first_part)
    await resumed.write(second_part)
    info = await resumed.commit(Digest.of(first_part + second_part))
    assert await read_blob(resumed_registry, REPO, info.digest) == first_part + second_part


async def test_upload_of_another_repository_is_unknown(registry: Registry) -> None:
    upload = await registry.repository(REPO).blobs.start_upload()
    with pytest.raises(BlobUploadUnknown):
        await registry.repository(OTHER).blobs.get_upload(upload.id)


async def test_upload_with_a_malformed_id_is_unknown(registry: Registry) -> None:
    with pytest.raises(BlobUploadUnknown):
        await registry.repository(REPO).blobs.get_upload("../../etc")


async def test_append_at_the_wrong_offset_is_range_invalid(registry: Registry) -> None:
    upload = await registry.repository(REPO).blobs.start_upload()
    await upload.write(b"12345")

    async def chunk() -> AsyncIterator[bytes]:
        yield b"678"

    with pytest.raises(RangeInvalid) as caught:
        await upload.append(chunk(), start=3)
    assert caught.value.headers["Range"] == "0-4"


async def test_cancelled_upload_is_gone(registry: Registry) -> None:
    blobs = registry.repository(REPO).blobs
    upload = await blobs.start_upload()
    await upload.write(b"abandoned")
    await upload.cancel()
    with pytest.raises(BlobUploadUnknown):
        await blobs.get_upload(upload.id)


async def test_upload_block_left_without_commit_cancels(registry: Registry) -> None:
    blobs = registry.repository(REPO).blobs
    async with blobs.upload() as upload:
        await upload.write(b"abandoned")
    with pytest.raises(BlobUploadUnknown):
        await blobs.get_upload(upload.id)


async def test_upload_block_left_by_an_error_cancels(registry: Registry) -> None:
    blobs = registry.repository(REPO).blobs
    with pytest.raises(RuntimeError):
        async with blobs.upload() as upload:
            await upload.write(b"abandoned")
            raise RuntimeError("client went away")
    with pytest.raises(BlobUploadUnknown):
        await blobs.get_upload(upload.id)


async def test_committed_upload_session_is_gone(registry: Registry) -> None:
    blobs = registry.repository(REPO).blobs
    upload = await blobs.start_upload()
    await upload.write(b"done")
    await upload.commit(Digest.of(b"done"))
    with pytest.raises(BlobUploadUnknown):
        await blobs.get_upload(upload.id)


async def test_same_content_pushed_twice_is_stored_once_and_linked_twice(
    registry: Registry,
) -> None:
    first = await push_blob(registry, REPO, b"shared layer")
    second = await push_blob(registry, OTHER, b"shared layer")
    assert first == second
    assert await read_blob(registry, OTHER, second) == b"shared layer"


async def test_mount_links_a_blob_from_another_repository(registry: Registry) -> None:
    digest = await push_blob(registry, REPO, b"mountable")
    target = registry.repository(OTHER).blobs
    info = await target.mount(digest, registry.repository(REPO).blobs)
    assert info is not None
    assert info.size == len(b"mountable")
    assert await read_blob(registry, OTHER, digest) == b"mountable"


async def test_mount_from_a_repository_without_the_blob_answers_none(
    registry: Registry,
) -> None:
    digest = await push_blob(registry, "acme/prod/third", b"elsewhere")
    target = registry.repository(OTHER).blobs
    assert await target.mount(digest, registry.repository(REPO).blobs) is None
    assert not await target.exists(digest)


async def test_deleted_blob_link_hides_the_blob(registry: Registry) -> None:
    digest = await push_blob(registry, REPO, b"unlinked")
    await registry.repository(REPO).blobs.delete(digest)
    assert not await registry.repository(REPO).blobs.exists(digest)


def test_invalid_repository_name_is_refused(registry: Registry) -> None:
    with pytest.raises(NameInvalid):
        registry.repository("just/two")


# -- manifests and tags ------------------------------------------------------------------


async def test_manifest_is_got_by_tag(registry: Registry) -> None:
    parsed = await push_image(registry, REPO, tag="1.0")
    stored = await registry.repository(REPO).manifests.get("1.0")
    assert stored.digest == parsed.digest
    assert stored.media_type == mt.OCI_MANIFEST


async def test_manifest_is_got_by_digest_with_its_exact_bytes(storage: Storage) -> None:
    parsed = await push_image(storage.registry, REPO)
    stored = await storage.reopen().repository(REPO).manifests.get(str(parsed.digest))
    assert Digest.of(stored.body) == parsed.digest


async def test_manifest_of_another_repository_is_unknown(registry: Registry) -> None:
    parsed = await push_image(registry, REPO)
    with pytest.raises(ManifestUnknown):
        await registry.repository(OTHER).manifests.get(str(parsed.digest))


async def test_manifest_with_a_missing_blob_is_refused(registry: Registry) -> None:
    config = await push_blob(registry, REPO, b"{}")
    body = oci_manifest(config, [Digest.of(b"never pushed")])
    with pytest.raises(ManifestBlobUnknown):
        await registry.repository(REPO).manifests.put(body, mt.OCI_MANIFEST)


async def test_manifest_with_a_blob_of_another_repository_is_refused(
    registry: Registry,
) -> None:
    config = await push_blob(registry, REPO, b"{}")
    foreign = await push_blob(registry, OTHER, b"other's layer")
    with pytest.raises(ManifestBlobUnknown):
        await registry.repository(REPO).manifests.put(
            oci_manifest(config, [foreign]), mt.OCI_MANIFEST
        )


async def test_tags_are_listed_in_lexical_order(registry: Registry) -> None:
    parsed = await push_image(registry, REPO, tag="b")
    manifests = registry.repository(REPO).manifests
    for tag in ("a", "C", "1.0"):
        await manifests.tag(tag, parsed.digest)
    assert [t async for t in registry.repository(REPO).tags.list()] == ["1.0", "C", "a", "b"]


async def test_tags_page_after_last(registry: Registry) -> None:
    parsed = await push_image(registry, REPO, tag="a")
    for tag in ("b", "c", "d"):
        await registry.repository(REPO).manifests.tag(tag, parsed.digest)
    assert await registry.repository(REPO).tags.page(n=2, last="a") == ["b", "c"]


async def test_retagging_moves_the_tag(registry: Registry) -> None:
    await push_image(registry, REPO, tag="latest", seed="one")
    second = await push_image(registry, REPO, tag="latest", seed="two")
    assert (await registry.repository(REPO).manifests.get("latest")).digest == second.digest


async def test_tagging_an_unknown_digest_is_manifest_unknown(registry: Registry) -> None:
    with pytest.raises(ManifestUnknown):
        await registry.repository(REPO).manifests.tag("x", Digest.of(b"nothing"))


async def test_unknown_tag_is_manifest_unknown(registry: Registry) -> None:
    with pytest.raises(ManifestUnknown):
        await registry.repository(REPO).manifests.get("missing")


async def test_deleting_a_tag_keeps_the_manifest(registry: Registry) -> None:
    parsed = await push_image(registry, REPO, tag="1.0")
    manifests = registry.repository(REPO).manifests
    await manifests.delete("1.0")
    with pytest.raises(ManifestUnknown):
        await manifests.get("1.0")
    assert (await manifests.get(str(parsed.digest))).digest == parsed.digest


async def test_deleting_by_digest_removes_the_manifest_and_its_tags(registry: Registry) -> None:
    parsed = await push_image(registry, REPO, tag="1.0")
    manifests = registry.repository(REPO).manifests
    await manifests.tag("stable", parsed.digest)
    await manifests.delete(str(parsed.digest))
    with pytest.raises(ManifestUnknown):
        await manifests.get(str(parsed.digest))
    assert await registry.repository(REPO).tags.page() == []


async def test_deleting_a_missing_tag_is_manifest_unknown(registry: Registry) -> None:
    with pytest.raises(ManifestUnknown):
        await registry.repository(REPO).manifests.delete("never")


def oci_index(children: list[Digest]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [
                {"mediaType": mt.OCI_MANIFEST, "digest": str(child), "size": 1}
                for child in children
            ],
        }
    ).encode()


async def test_sparse_index_is_accepted_by_default(registry: Registry) -> None:
    body = oci_index([Digest.of(b"child not pushed")])
    parsed = await registry.repository(REPO).manifests.put(body, mt.OCI_INDEX, tag="multi")
    assert (await registry.repository(REPO).manifests.get("multi")).digest == parsed.digest


async def test_strict_index_refuses_missing_children(storage: Storage) -> None:
    strict = Registry(storage.registry.driver, strict_index=True)
    body = oci_index([Digest.of(b"child not pushed")])
    with pytest.raises(ManifestBlobUnknown):
        await strict.repository(REPO).manifests.put(body, mt.OCI_INDEX)


async def test_strict_index_accepts_children_in_the_repository(storage: Storage) -> None:
    strict = Registry(storage.registry.driver, strict_index=True)
    child = await push_image(strict, REPO, seed="child")
    parsed = await strict.repository(REPO).manifests.put(oci_index([child.digest]), mt.OCI_INDEX)
    assert parsed.manifests == (child.digest,)


# -- catalog -------------------------------------------------------------------------------


async def test_catalog_lists_repositories_with_manifests_in_order(registry: Registry) -> None:
    for name in ("acme/prod/zeta", "acme/prod/alpha", "acme/dev/team/app"):
        await push_image(registry, name, tag="1")
    await push_blob(registry, "acme/prod/blobs-only", b"no manifest")
    assert await registry.catalog() == ["acme/dev/team/app", "acme/prod/alpha", "acme/prod/zeta"]


async def test_catalog_pages_with_n_and_last(registry: Registry) -> None:
    names = [f"acme/prod/repo{n}" for n in range(5)]
    for name in names:
        await push_image(registry, name)
    assert await registry.catalog(n=2) == names[:2]
    assert await registry.catalog(n=2, last=names[1]) == names[2:4]
    assert await registry.catalog(n=2, last=names[3]) == names[4:]
    assert await registry.catalog(n=2, last=names[4]) == []


async def test_catalog_last_need_not_be_a_repository(registry: Registry) -> None:
    for name in ("acme/prod/a", "acme/prod/c"):
        await push_image(registry, name)
    assert await registry.catalog(last="acme/prod/b") == ["acme/prod/c"]


async def test_catalog_of_an_empty_registry_is_empty(registry: Registry) -> None:
    assert await registry.catalog() == []


# -- purging idle uploads ----------------------------------------------------------------------


async def test_purge_removes_idle_uploads_and_keeps_fresh_ones(registry: Registry) -> None:
    blobs = registry.repository(REPO).blobs
    idle = await blobs.start_upload()
    await idle.write(b"left behind")
    await asyncio.sleep(0.05)
    cutoff = time.time()
    await asyncio.sleep(0.05)
    fresh = await blobs.start_upload()
    await fresh.write(b"in progress")

    purged = await registry.purge_uploads(older_than=3600, now=cutoff + 3600)

    assert purged == 1
    with pytest.raises(BlobUploadUnknown):
        await blobs.get_upload(idle.id)
    assert (await blobs.get_upload(fresh.id)).size == len(b"in progress")


async def test_purge_counts_recent_writes_as_activity(registry: Registry) -> None:
    blobs = registry.repository(REPO).blobs
    upload = await blobs.start_upload()
    await asyncio.sleep(0.05)
    cutoff = time.time()
    await asyncio.sleep(0.05)
    await upload.write(b"still sending")
    assert await registry.purge_uploads(older_than=60, now=cutoff + 60) == 0


async def test_purge_keeps_everything_younger_than_the_age(registry: Registry) -> None:
    blobs = registry.repository(REPO).blobs
    upload = await blobs.start_upload()
    assert await registry.purge_uploads(older_than=3600) == 0
    assert (await blobs.get_upload(upload.id)).id == upload.id


async def test_purge_leaves_committed_blobs_alone(registry: Registry) -> None:
    digest = await push_blob(registry, REPO, b"committed")
    await registry.purge_uploads(older_than=0, now=time.time() + 3600)
    assert await read_blob(registry, REPO, digest) == b"committed"


# -- referrers -----------------------------------------------------------------------------------


async def push_referrer(registry: Registry, subject: Digest, artifact_type: str) -> Any:
    empty = await push_blob(registry, REPO, b"{}")
    layer = await push_blob(registry, REPO, f"sbom for {artifact_type}".encode())
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": mt.OCI_EMPTY, "digest": str(empty), "size": 2},
            "layers": [{"mediaType": "application/json", "digest": str(layer), "size": 1}],
            "subject": {"mediaType": mt.OCI_MANIFEST, "digest": str(subject), "size": 1},
            "annotations": {"kind": artifact_type},
        }
    ).encode()
    return await registry.repository(REPO).manifests.put(body, mt.OCI_MANIFEST)


async def test_referrers_lists_manifests_with_that_subject(registry: Registry) -> None:
    subject = (await push_image(registry, REPO, tag="1.0")).digest
    sbom = await push_referrer(registry, subject, "application/vnd.example.sbom")
    [record] = await registry.repository(REPO).manifests.referrers(subject)
    assert record == {
        "mediaType": mt.OCI_MANIFEST,
        "digest": str(sbom.digest),
        "size": sbom.size,
        "artifactType": "application/vnd.example.sbom",
        "annotations": {"kind": "application/vnd.example.sbom"},
    }


async def test_referrers_of_a_subject_without_any_is_empty(registry: Registry) -> None:
    subject = (await push_image(registry, REPO)).digest
    assert await registry.repository(REPO).manifests.referrers(subject) == []


async def test_referrers_are_recorded_before_the_subject_exists(registry: Registry) -> None:
    subject = Digest.of(b"pushed later")
    await push_referrer(registry, subject, "application/vnd.example.sig")
    assert len(await registry.repository(REPO).manifests.referrers(subject)) == 1


async def test_deleted_referrer_is_no_longer_listed(registry: Registry) -> None:
    subject = (await push_image(registry, REPO)).digest
    first = await push_referrer(registry, subject, "application/vnd.example.one")
    second = await push_referrer(registry, subject, "application/vnd.example.two")
    await registry.repository(REPO).manifests.delete(str(first.digest))
    records = await registry.repository(REPO).manifests.referrers(subject)
    assert [r["digest"] for r in records] == [str(second.digest)]


# -- the embedding example --------------------------------------------------------------------

MANIFEST_LINE = re.compile(r"^manifest (sha256:[0-9a-f]{64}) " + re.escape(mt.OCI_MANIFEST) + "$")


def run_example(*args: str) -> str:
    result = subprocess.run(
        [str(VENV_PYTHON if VENV_PYTHON.exists() else sys.executable), "examples/embed.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def example_digest(output: str) -> str:
    matches = [m.group(1) for line in output.splitlines() if (m := MANIFEST_LINE.match(line))]
    assert len(matches) == 1, output
    return matches[0]


def test_embed_example_prints_the_manifest_digest() -> None:
    output = run_example()
    digest = example_digest(output)
    assert Digest.parse(digest).algorithm == "sha256"
    assert "catalog ['acme/prod/app']" in output


def test_embed_example_runs_on_a_local_folder(tmp_path: Path) -> None:
    assert example_digest(run_example(f"file://{tmp_path}")) == example_digest(run_example())
    assert (tmp_path / "docker" / "registry" / "v2" / "repositories" / "acme").is_dir()
