"""Archive upload requests, fuzzed: their bodies, query parameters and names.

A valid ``docker save`` tarball is cut, bit-flipped, padded or replaced by random
bytes, and sent with fuzzed ``tag`` and ``compression`` parameters to fuzzed
registry names. The answer is a 201 or a 4xx with the JSON error body, and a refused
import stores nothing (the archive issue's own tests cover archive contents in depth).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import text_any
from tests.fuzz.support import (
    FUZZ,
    TENANT,
    Target,
    assert_client_error,
    assert_not_a_server_error,
    quote,
    start_target,
)
from tests.helpers.images import write_docker_archive

ARCHIVES = f"/api/v1/registries/{TENANT}/archives"


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    yield from start_target(tmp_path_factory, "fuzz-archives")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = Path(tmp_path_factory.mktemp("archive")) / "image.tar"
    write_docker_archive(path, "imported:v1", [{"etc/fuzz.txt": "fuzzed archive\n"}])
    return path.read_bytes()


def _import(target: Target, path: str, body: bytes, params: list[tuple[str, str]]) -> int:
    before = target.files()
    resp = target.request(
        "POST",
        path,
        auth=target.writer,
        params=params,
        headers={"Content-Type": "application/octet-stream"},
        data=body,
    )
    assert_not_a_server_error(resp)
    if resp.status_code >= 400:
        assert_client_error(resp)
        assert target.files() == before
    target.assert_serving()
    return resp.status_code


@st.composite
def damaged(draw: st.DrawFn, archive: bytes) -> bytes:
    kind = draw(st.sampled_from(["cut", "flip", "pad", "random", "gzip-of-cut", "empty"]))
    if kind == "cut":
        return archive[: draw(st.integers(0, len(archive) - 1))]
    if kind == "flip":
        at = draw(st.integers(0, len(archive) - 1))
        return (
            archive[:at] + bytes([archive[at] ^ (1 << draw(st.integers(0, 7)))]) + archive[at + 1 :]
        )
    if kind == "pad":
        return archive + draw(st.binary(min_size=1, max_size=2000))
    if kind == "gzip-of-cut":
        return gzip.compress(archive)[: draw(st.integers(0, 300))]
    if kind == "empty":
        return b""
    return draw(st.binary(max_size=3000))


def test_the_undamaged_archive_is_imported(target: Target, archive: bytes) -> None:
    assert _import(target, ARCHIVES, archive, []) == 201


@FUZZ
@given(data=st.data())
def test_damaged_archive_is_refused_or_imported_whole(
    target: Target, archive: bytes, data: st.DataObject
) -> None:
    _import(target, ARCHIVES, data.draw(damaged(archive)), [])


@FUZZ
@given(
    tags=st.lists(
        st.sampled_from(["app:v2", "x", "Bad:tag", ":", "a/b:c", ""]) | text_any, max_size=3
    ),
    compression=st.none() | st.sampled_from(["gzip", "zstd", "GZIP", "", "lz4"]) | text_any,
)
def test_archive_query_parameters_are_checked(
    target: Target, archive: bytes, tags: list[str], compression: str | None
) -> None:
    params = [("tag", tag) for tag in tags]
    if compression is not None:
        params.append(("compression", compression))
    _import(target, ARCHIVES, archive, params)


names = st.one_of(
    st.sampled_from(["fuzz/Reg", "fuzz/reg/extra", "fuzz", "other/reg", "fuzz/../reg", "fuzz/%00"]),
    st.builds(lambda owner, registry: f"{owner}/{registry}", text_any, text_any),
)


@FUZZ
@given(name=names)
def test_archive_import_into_fuzzed_registry_names_is_refused(
    target: Target, archive: bytes, name: str
) -> None:
    status = _import(target, f"/api/v1/registries/{quote(name)}/archives", archive, [])
    assert status >= 400


@FUZZ
@given(
    image=st.one_of(st.sampled_from(["app:v1", "app@sha256:" + "0" * 64, "", ":", "@"]), text_any),
    platform=st.none() | st.sampled_from(["linux/amd64", "linux", "/", "a/b/c/d"]) | text_any,
)
def test_archive_export_parameters_are_checked(
    target: Target, image: str, platform: str | None
) -> None:
    params = [("image", image)] + ([] if platform is None else [("platform", platform)])
    resp = target.request("GET", ARCHIVES, auth=target.writer, params=params)
    assert_not_a_server_error(resp)
    target.assert_serving()
