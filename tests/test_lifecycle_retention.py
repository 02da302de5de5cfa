"""Retention rules: every rule, the protected patterns, dry runs, attachments, the CLI.

The library runs the rules on real local storage; a tag's age is its link's
modification time, so tests age tags by setting that time on disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from drivers import open_driver
from registry_core import Digest, Registry
from registry_core.lifecycle.retention import (
    RetentionReport,
    RetentionRules,
    get_retention,
    run_retention,
    set_retention,
    untagged_policy,
)
from registry_core.names import RepositoryName, Tenant
from registry_core.storage import layout
from tests.helpers.images import Image, build_image, build_index
from tests.helpers.tenants import cargohold_cli

T = TypeVar("T")
TENANT = Tenant("acme", "prod")
DAY = 86400.0
NOW = time.time()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def registry(root: Path) -> Iterator[Registry]:
    root.mkdir()
    reg = Registry(open_driver(f"file://{root}"), settings_ttl=0.0)
    yield reg
    asyncio.run(reg.close())


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def image(seed: str, **extra: Any) -> Image:
    return build_image([{f"{seed}.txt": seed}], **extra)


async def _push(registry: Registry, repo: str, img: Image | object, tag: str | None) -> str:
    repository = registry.repository(repo)
    for blob in img.blobs():  # type: ignore[attr-defined]
        async with repository.blobs.upload() as upload:
            await upload.write(blob.data)
            await upload.commit(Digest.parse(blob.digest))
    for child in getattr(img, "images", ()):
        await repository.manifests.put(child.manifest, child.media_type)
    await repository.manifests.put(img.manifest, img.media_type, tag=tag)  # type: ignore[attr-defined]
    return img.digest  # type: ignore[attr-defined]


def push(
    registry: Registry, repo: str, img: Image | object, tag: str | None, age_days: float = 0
) -> str:
    digest = run(_push(registry, repo, img, tag))
    if age_days:
        when = NOW - age_days * DAY
        name = RepositoryName(repo)
        if tag is not None:
            age(registry, layout.tag_current_link(name, tag), when)
        age(registry, layout.revision_link(name, Digest.parse(digest)), when)
    return digest


def age(registry: Registry, path: str, when: float) -> None:
    local = registry.driver.local_path(path)
    assert local is not None
    os.utime(local, (when, when))


def tags(registry: Registry, repo: str) -> list[str]:
    return run(registry.repository(repo).manifests.tags())


def revisions(registry: Registry, repo: str) -> set[str]:
    return {str(d) for d in run(registry.repository(repo).manifests.revisions())}


def apply(registry: Registry, dry_run: bool = False, **rules: Any) -> RetentionReport:
    return run(run_retention(registry, TENANT, RetentionRules(**rules), dry_run=dry_run, now=NOW))


def test_keep_last_keeps_the_n_most_recent_tags_of_each_image(registry: Registry) -> None:
    for repo in ("acme/prod/app", "acme/prod/tool"):
        for n in range(4):
            push(registry, repo, image(f"{repo}-{n}"), f"build-{n}", age_days=10 - n)

    apply(registry, keep_last=2)

    assert tags(registry, "acme/prod/app") == ["build-2", "build-3"]
    assert tags(registry, "acme/prod/tool") == ["build-2", "build-3"]


def test_tags_older_than_the_limit_go_with_their_manifests(registry: Registry) -> None:
    old = push(registry, "acme/prod/app", image("old"), "old", age_days=40)
    new = push(registry, "acme/prod/app", image("new"), "new", age_days=1)

    report = apply(registry, delete_older_than=30 * DAY)

    assert tags(registry, "acme/prod/app") == ["new"]
    assert revisions(registry, "acme/prod/app") == {new}
    assert report.tags == ["acme/prod/app:old"]
    assert report.manifests == [f"acme/prod/app@{old}"]


def test_a_manifest_keeps_living_while_another_tag_points_at_it(registry: Registry) -> None:
    shared = image("shared")
    digest = push(registry, "acme/prod/app", shared, "old", age_days=40)
    push(registry, "acme/prod/app", shared, "fresh")

    apply(registry, delete_older_than=30 * DAY)

    assert tags(registry, "acme/prod/app") == ["fresh"]
    assert digest in revisions(registry, "acme/prod/app")


def test_tags_not_pulled_for_the_limit_go_and_pulled_ones_stay(registry: Registry) -> None:
    rules = RetentionRules(delete_unpulled_after=30 * DAY, since=NOW - 100 * DAY)
    run(set_retention(registry.settings, TENANT, rules))
    push(registry, "acme/prod/app", image("stale"), "stale", age_days=60)
    pulled = push(registry, "acme/prod/app", image("pulled"), "pulled", age_days=60)
    push(registry, "acme/prod/app", image("recent"), "recent", age_days=5)
    run(registry.repository("acme/prod/app").manifests.pulled(Digest.parse(pulled)))

    run(run_retention(registry, TENANT, rules, now=NOW))

    assert tags(registry, "acme/prod/app") == ["pulled", "recent"]


def test_a_pull_is_recorded_once_per_manifest_per_hour(registry: Registry) -> None:
    run(set_retention(registry.settings, TENANT, RetentionRules(delete_unpulled_after=DAY)))
    digest = Digest.parse(push(registry, "acme/prod/app", image("hourly"), "1"))
    manifests = registry.repository("acme/prod/app").manifests
    path = layout.pull_time(RepositoryName("acme/prod/app"), digest)

    run(manifests.pulled(digest))
    first = run(registry.driver.read(path))
    run(registry.driver.delete(path))
    run(manifests.pulled(digest))

    assert float(first) == pytest.approx(time.time(), abs=60)
    assert not Path(registry.driver.local_path(path) or "").exists()


def test_untagged_manifests_older_than_the_limit_go_but_not_index_children(
    registry: Registry,
) -> None:
    untagged_old = push(registry, "acme/prod/app", image("untagged-old"), None, age_days=20)
    untagged_new = push(registry, "acme/prod/app", image("untagged-new"), None, age_days=1)
    index = build_index([image("child-amd64"), image("child-arm64", architecture="arm64")])
    push(registry, "acme/prod/app", index, "multi", age_days=20)
    children = {m.digest for m in index.images}
    for child in children:
        age(
            registry,
            layout.revision_link(RepositoryName("acme/prod/app"), Digest.parse(child)),
            NOW - 20 * DAY,
        )

    apply(registry, delete_untagged_after=7 * DAY)

    left = revisions(registry, "acme/prod/app")
    assert untagged_old not in left
    assert {untagged_new, index.digest, *children} <= left


def test_protected_patterns_are_never_deleted_by_any_rule(registry: Registry) -> None:
    for n, tag in enumerate(["latest", "v1.0", "v2.0", "nightly-1", "nightly-2"]):
        push(registry, "acme/prod/app", image(tag), tag, age_days=100 - n)

    apply(registry, keep_last=0, delete_older_than=DAY, protected=["latest", "v*"])

    assert tags(registry, "acme/prod/app") == ["latest", "v1.0", "v2.0"]


def test_a_dry_run_lists_exactly_what_a_real_run_deletes_and_deletes_nothing(
    registry: Registry,
) -> None:
    for n in range(5):
        push(registry, "acme/prod/app", image(f"dry-{n}"), f"t{n}", age_days=10 - n)
    push(registry, "acme/prod/app", image("dry-untagged"), None, age_days=30)
    before = (tags(registry, "acme/prod/app"), revisions(registry, "acme/prod/app"))

    planned = apply(registry, dry_run=True, keep_last=2, delete_untagged_after=7 * DAY)
    unchanged = (tags(registry, "acme/prod/app"), revisions(registry, "acme/prod/app"))
    done = apply(registry, keep_last=2, delete_untagged_after=7 * DAY)

    assert unchanged == before
    assert planned.tags == done.tags and planned.manifests == done.manifests
    assert len(done.tags) == 3 and len(done.manifests) == 4


def test_attachments_go_with_their_subject_and_are_never_counted(registry: Registry) -> None:
    old = push(registry, "acme/prod/app", image("signed-old"), "old", age_days=40)
    push(registry, "acme/prod/app", image("signed-new"), "new", age_days=1)
    subject = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": old, "size": 1}
    referrer = image("sbom-of-old", annotations={"kind": "sbom"})
    body = json.loads(referrer.manifest)
    body["subject"] = subject
    referrer_body = json.dumps(body).encode()
    signature = image("cosign-sig-of-old")
    sig_tag = old.replace(":", "-") + ".sig"
    push(registry, "acme/prod/app", signature, sig_tag, age_days=40)

    async def put_referrer() -> str:
        repository = registry.repository("acme/prod/app")
        for blob in referrer.blobs():
            async with repository.blobs.upload() as upload:
                await upload.write(blob.data)
                await upload.commit(Digest.parse(blob.digest))
        parsed = await repository.manifests.put(referrer_body, referrer.media_type)
        return str(parsed.digest)

    referrer_digest = run(put_referrer())

    report = apply(registry, keep_last=1)

    assert tags(registry, "acme/prod/app") == ["new"]
    left = revisions(registry, "acme/prod/app")
    assert old not in left and referrer_digest not in left and signature.digest not in left
    assert sorted(report.manifests) == sorted(
        f"acme/prod/app@{d}" for d in (old, referrer_digest, signature.digest)
    )


def test_rules_are_set_shown_and_run_from_the_command_line(registry: Registry, root: Path) -> None:
    storage = f"file://{root}"
    for n in range(3):
        push(registry, "acme/prod/app", image(f"cli-{n}"), f"t{n}", age_days=10 - n)
    push(registry, "acme/prod/app", image("cli-latest"), "latest", age_days=20)

    cargohold_cli(
        "retention",
        "set",
        "acme/prod",
        "--keep-last",
        "1",
        "--untagged",
        "7d",
        "--protect",
        "latest",
        storage=storage,
    )
    shown = cargohold_cli("retention", "show", "acme/prod", storage=storage).stdout
    dry = cargohold_cli("retention", "run", "acme/prod", "--dry-run", storage=storage).stdout
    unchanged = tags(registry, "acme/prod/app")
    cargohold_cli("retention", "run", "acme/prod", storage=storage)

    assert "keep last tags per image: 1" in shown and "latest" in shown and "7d" in shown
    assert "would delete tag acme/prod/app:t0" in dry and "acme/prod/app:t1" in dry
    assert unchanged == ["latest", "t0", "t1", "t2"]
    assert tags(registry, "acme/prod/app") == ["latest", "t2"]


def test_gc_collects_untagged_manifests_only_where_a_rule_says_so(registry: Registry) -> None:
    rules = RetentionRules(delete_untagged_after=7 * DAY)
    run(set_retention(registry.settings, TENANT, rules))

    collect = run(untagged_policy(registry))

    assert collect is not None
    digest = Digest.of(b"any")
    assert collect("acme/prod/app", digest, NOW - 8 * DAY)
    assert not collect("acme/prod/app", digest, NOW - 6 * DAY)
    assert not collect("acme/other/app", digest, NOW - 80 * DAY)


def test_editing_the_rules_keeps_the_not_pulled_clock(registry: Registry) -> None:
    first = RetentionRules(delete_unpulled_after=30 * DAY, since=NOW - 100 * DAY)
    run(set_retention(registry.settings, TENANT, first))

    run(
        set_retention(
            registry.settings, TENANT, RetentionRules(delete_unpulled_after=DAY, keep_last=5)
        )
    )

    stored = run(get_retention(registry.settings, TENANT))
    assert stored is not None and stored.since == NOW - 100 * DAY and stored.keep_last == 5
