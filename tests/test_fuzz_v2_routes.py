"""Every ``/v2/`` route with fuzzed repository names, tags, digests and query parameters.

The property: no 5xx; a 4xx carries the spec's JSON error body and stores nothing;
the server keeps serving without a traceback. Only the routes that may succeed on
their own (starting an upload, reading the seeded repository) may answer 2xx.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import digests, text_any
from tests.fuzz.support import (
    FUZZ,
    REPO,
    TAG,
    TENANT,
    Target,
    assert_client_error,
    assert_not_a_server_error,
    quote,
    start_target,
)

_fresh = itertools.count()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    yield from start_target(tmp_path_factory, "fuzz-v2")


component = st.from_regex(r"\A[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*\Z").filter(
    lambda c: len(c) <= 60
)
names = st.one_of(
    component.map(lambda c: f"{TENANT}/{c}"),
    st.lists(component, min_size=1, max_size=6).map(lambda cs: "/".join(cs)),
    st.integers(200, 400).map(lambda n: f"{TENANT}/" + "a" * n),
    st.sampled_from(
        [
            f"{TENANT}/../../etc/passwd",
            f"{TENANT}/App",
            f"{TENANT}//app",
            f"{TENANT}/app/",
            f"{TENANT}/.app",
            "fuzz",
            "fuzz/reg",
            "other/tenant/app",
            f"{TENANT}/a%2Fb",
            f"{TENANT}/app\n",
        ]
    ),
    text_any,
).filter(lambda name: name != REPO)
"""Valid names that hold nothing, names of other tenants, and invalid ones."""

references = st.one_of(
    st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9._-]{0,140}\Z"),
    digests,
    text_any,
).filter(lambda ref: ref not in (TAG, "latest"))

ROUTES = [
    ("GET", "/v2/{name}/manifests/{ref}"),
    ("HEAD", "/v2/{name}/manifests/{ref}"),
    ("PUT", "/v2/{name}/manifests/{ref}"),
    ("DELETE", "/v2/{name}/manifests/{ref}"),
    ("GET", "/v2/{name}/blobs/{digest}"),
    ("HEAD", "/v2/{name}/blobs/{digest}"),
    ("DELETE", "/v2/{name}/blobs/{digest}"),
    ("GET", "/v2/{name}/blobs/uploads/{ref}"),
    ("PATCH", "/v2/{name}/blobs/uploads/{ref}"),
    ("PUT", "/v2/{name}/blobs/uploads/{ref}"),
    ("DELETE", "/v2/{name}/blobs/uploads/{ref}"),
    ("GET", "/v2/{name}/tags/list"),
    ("GET", "/v2/{name}/referrers/{digest}"),
    ("POST", "/v2/{name}/blobs/uploads/"),
]


def _probe(
    target: Target,
    method: str,
    path: str,
    may_succeed: bool,
    *,
    scratch: str | None = None,
    **kwargs: object,
) -> None:
    """The property for one request; *scratch*: an upload session whose data may change."""
    before = target.files(ignore=scratch)
    resp = target.request(method, path, auth=target.writer, **kwargs)  # type: ignore[arg-type]
    if may_succeed:
        assert_not_a_server_error(resp)
    else:
        assert_client_error(resp)
    if resp.status_code >= 400:
        assert target.files(ignore=scratch) == before
    target.assert_serving()


@FUZZ
@given(
    route=st.sampled_from(ROUTES),
    name=names,
    ref=references,
    digest=digests,
    body=st.binary(max_size=300),
)
def test_every_route_refuses_fuzzed_names_references_and_digests(
    target: Target, route: tuple[str, str], name: str, ref: str, digest: str, body: bytes
) -> None:
    method, template = route
    path = template.format(name=quote(name), ref=quote(ref), digest=quote(digest))
    # A valid, absent name starts an upload (202), and has no referrers (an empty list).
    may_succeed = method == "POST" or "/referrers/" in template
    _probe(target, method, path, may_succeed, data=body if method in ("PUT", "PATCH") else None)


@FUZZ
@given(ref=references, digest=digests, method=st.sampled_from(["GET", "HEAD", "DELETE"]))
def test_fuzzed_references_and_digests_in_the_seeded_repository_are_refused(
    target: Target, ref: str, digest: str, method: str
) -> None:
    _probe(target, method, f"/v2/{REPO}/manifests/{quote(ref)}", False)
    _probe(target, method, f"/v2/{REPO}/blobs/{quote(digest)}", False)


query_values = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["", "0", "-1", "1e3", "0x10", " 5", "5 ", "NaN", "10000000", "1.5"]),
    digests,
    text_any,
)


@FUZZ
@given(n=st.none() | query_values, last=st.none() | query_values)
def test_pagination_parameters_of_tags_and_catalog_are_checked(
    target: Target, n: str | None, last: str | None
) -> None:
    params = {key: value for key, value in (("n", n), ("last", last)) if value is not None}
    for path in (f"/v2/{REPO}/tags/list", "/v2/_catalog"):
        _probe(target, "GET", path, True, params=params)


@FUZZ
@given(artifact_type=query_values)
def test_referrers_artifact_type_filter_is_checked(target: Target, artifact_type: str) -> None:
    path = f"/v2/{REPO}/referrers/{target.image.digest}"
    _probe(target, "GET", path, True, params={"artifactType": artifact_type})


@FUZZ
@given(
    digest=st.none() | digests,
    mount=st.none() | digests,
    source=st.none() | names | st.just(REPO),
    body=st.binary(max_size=200),
)
def test_upload_start_parameters_digest_mount_and_from_are_checked(
    target: Target, digest: str | None, mount: str | None, source: str | None, body: bytes
) -> None:
    params = {
        key: value
        for key, value in (("digest", digest), ("mount", mount), ("from", source))
        if value is not None
    }
    # A repository of its own per example: the uploads it may start stay apart.
    path = f"/v2/{TENANT}/up{next(_fresh)}/blobs/uploads/"
    _probe(target, "POST", path, True, params=params, data=body if digest else None)


@FUZZ
@given(digest=st.none() | digests, body=st.binary(max_size=200))
def test_upload_finish_digest_is_checked(target: Target, digest: str | None, body: bytes) -> None:
    started = target.request(
        "POST", f"/v2/{TENANT}/fin{next(_fresh)}/blobs/uploads/", auth=target.writer
    )
    assert started.status_code == 202, started.text
    params = {} if digest is None else {"digest": digest}
    location = started.headers["Location"]
    # A refused finish may keep the bytes it appended in the session (the client can
    # still finish it right); no blob, link or other session may appear.
    session = location.rsplit("/", 1)[-1]
    _probe(target, "PUT", location, True, scratch=session, params=params, data=body)


@FUZZ
@given(query=st.text(alphabet="%&=;+?#/aZ09fF\x7f ", max_size=40))
def test_raw_query_strings_with_broken_escapes_are_harmless(target: Target, query: str) -> None:
    for path in (f"/v2/{REPO}/tags/list", f"/v2/{REPO}/referrers/{target.image.digest}"):
        _probe(target, "GET", f"{path}?{query}", True)
