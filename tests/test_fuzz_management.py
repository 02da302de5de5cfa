"""Management API JSON bodies, fuzzed from valid ones (schemathesis covers the schema side).

Each write route starts from a body it accepts; Hypothesis replaces, removes or adds
fields and breaks the bytes (invalid UTF-8, duplicate keys, deep nesting, cuts). The
answer is a 2xx or a 4xx with the JSON error body; a refused request writes no record.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import broken_document, encode
from tests.fuzz.support import (
    FUZZ,
    Target,
    assert_client_error,
    assert_not_a_server_error,
    start_target,
)
from tests.helpers.tenants import Seeder

API = "/api/v1"

WRITES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "create user": ("POST", f"{API}/users", {"name": "u1", "password": "pw-0123456789"}),
    # "victim", never a login the other tests use: a valid change may reset its password.
    "change user": ("PATCH", f"{API}/users/victim", {"password": "pw-new-0123456789"}),
    "create api key": ("POST", f"{API}/users/victim/api-keys", {"name": "k", "expires_in": "30d"}),
    "create owner": ("POST", f"{API}/owners", {"name": "o1", "kind": "org"}),
    "create registry": (
        "POST",
        f"{API}/owners/fuzz/registries",
        {"name": "r1", "visibility": "private"},
    ),
    "change registry": ("PATCH", f"{API}/registries/fuzz/reg", {"visibility": "private"}),
    "set member": ("PUT", f"{API}/registries/fuzz/reg/members", {"user": "victim", "role": "read"}),
    "create token": (
        "POST",
        f"{API}/registries/fuzz/reg/tokens",
        {"name": "t", "expires_in": 3600, "max_pulls": 10, "images": "app*"},
    ),
}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    for running in start_target(tmp_path_factory, "fuzz-management"):
        storage = running.server.storage_url
        Seeder(storage).user("victim")
        yield running


def _write(target: Target, method: str, path: str, body: bytes, content_type: str) -> None:
    before = target.files()
    resp = target.request(
        method, path, auth=target.root, headers={"Content-Type": content_type}, data=body
    )
    assert_not_a_server_error(resp)
    if resp.status_code >= 400:
        assert_client_error(resp)
        assert target.files() == before
    target.assert_serving()


def test_the_unbroken_bodies_are_accepted(target: Target) -> None:
    for name, (method, path, body) in WRITES.items():
        resp = target.request(method, path, auth=target.root, json=body)
        assert resp.status_code in (200, 201), (name, resp.status_code, resp.text)


@FUZZ
@given(data=st.data())
def test_broken_management_bodies_are_refused_or_applied_whole(
    target: Target, data: st.DataObject
) -> None:
    method, path, body = WRITES[data.draw(st.sampled_from(sorted(WRITES)))]
    content_type = data.draw(
        st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"])
    )
    _write(target, method, path, data.draw(broken_document(body)), content_type)


@FUZZ
@given(body=st.binary(max_size=300), route=st.sampled_from(sorted(WRITES)))
def test_arbitrary_bytes_as_a_management_body_are_refused(
    target: Target, body: bytes, route: str
) -> None:
    method, path, _ = WRITES[route]
    _write(target, method, path, body, "application/json")


@pytest.mark.parametrize(
    ("route", "field", "value"),
    [
        ("create user", "name", "trailing\n"),
        ("create owner", "name", "a" * 65),
        ("create api key", "expires_in", 1e300),
        ("create api key", "expires_in", "99999999999w"),
        ("create token", "max_pulls", 2**64),
        ("create token", "max_pulls", 2.5),
    ],
    ids=["newline-name", "long-name", "huge-expiry", "huge-duration", "huge-count", "half-count"],
)
def test_values_past_the_documented_bounds_are_400(
    target: Target, route: str, field: str, value: Any
) -> None:
    method, path, body = WRITES[route]
    before = target.files()
    resp = target.request(method, path, auth=target.root, data=encode({**body, field: value}))
    assert resp.status_code == 400, resp.text
    assert_client_error(resp)
    assert target.files() == before
    target.assert_serving()
