"""``Authorization`` headers and the token endpoint, fuzzed.

Bad base64, a missing colon, non-UTF-8 bytes, oversized values, forged and
``alg: none`` JWTs, a real token with its payload swapped: never a 2xx on a private
repository or the management API, always a 4xx with a JSON error body, no traceback.
The token endpoint answers any query or form body with a 4xx, or with a token that
grants nothing the caller may not do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import header_text, sendable, text_any
from tests.fuzz.support import (
    FUZZ,
    REPO,
    TENANT,
    Target,
    assert_client_error,
    assert_not_a_server_error,
    start_target,
)
from tests.helpers.tenants import fetch_token


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    yield from start_target(tmp_path_factory, "fuzz-auth")


@pytest.fixture(scope="module")
def real_token(target: Target) -> str:
    return fetch_token(target.url, f"repository:{REPO}:pull", auth=target.writer.auth)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    found = {
        "iss": "cargohold",
        "sub": "writer",
        "aud": "cargohold",
        "exp": now + 600,
        "nbf": now - 5,
        "iat": now,
        "jti": "fuzz",
        "access": [{"type": "repository", "name": REPO, "actions": ["pull", "push"]}],
        "kind": "user",
    }
    found.update(changes)
    return found


def jwt(header: Any, payload: Any, key: bytes | None) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = b"" if key is None else hmac.new(key, signing_input.encode(), "sha256").digest()
    return f"{signing_input}.{b64url(signature)}"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)

forged_tokens = st.one_of(
    # alg none, no signature: the classic forgery.
    st.builds(
        lambda alg, c: jwt({"alg": alg, "typ": "JWT"}, c, None),
        st.sampled_from(["none", "None", "NONE", "", "HS256"]),
        st.builds(claims),
    ),
    # Signed, but with a key the server never had.
    st.builds(
        lambda key, c: jwt({"alg": "HS256", "typ": "JWT"}, c, key),
        st.binary(min_size=0, max_size=40),
        st.builds(claims, exp=st.integers(-(2**40), 2**70), sub=text_any),
    ),
    # Header and payload of any JSON shape.
    st.builds(lambda h, p: jwt(h, p, b"x" * 32), json_values, json_values),
    st.lists(st.text(alphabet="abcXYZ019-_=+/.", max_size=30), max_size=5).map(".".join),
)

credentials = st.one_of(
    st.binary(max_size=80),  # no colon, non-UTF-8, anything
    st.builds(lambda u, p: u + b":" + p, st.binary(max_size=30), st.binary(max_size=30)),
    st.builds(lambda p: b"writer:" + p, st.binary(max_size=40)),  # the right user, a wrong secret
    st.builds(lambda p: b"fuzz/reg:" + p, st.binary(max_size=40)),  # a tenant login
)

authorizations = st.one_of(
    credentials.map(lambda raw: b"Basic " + base64.b64encode(raw)),
    header_text.map(lambda text: "Basic " + text),
    forged_tokens.map(lambda token: "Bearer " + token),
    st.builds(lambda scheme, rest: f"{scheme} {rest}", header_text, header_text),
    st.binary(min_size=1, max_size=60).map(lambda raw: b"Basic " + raw),  # raw, not base64
    st.integers(100, 7000).map(lambda n: "Basic " + "QUFB" * (n // 4)),
    st.sampled_from(["Basic", "Bearer", "Basic =", "Bearer .", "Bearer ..", "basic Og=="]),
).filter(sendable)


def _refused(target: Target, method: str, path: str, value: str | bytes) -> None:
    resp = target.request(method, path, headers={"Authorization": value})
    errors = assert_client_error(resp)
    assert resp.status_code in (400, 401, 403, 404, 429, 431), resp.status_code
    if resp.status_code == 401 and errors:
        assert errors[0]["code"] == "UNAUTHORIZED"
    target.assert_serving()


@FUZZ
@given(value=authorizations)
def test_bad_authorization_never_opens_a_private_repository(
    target: Target, value: str | bytes
) -> None:
    _refused(target, "GET", f"/v2/{REPO}/tags/list", value)


@FUZZ
@given(value=authorizations)
def test_bad_authorization_never_opens_the_management_api(
    target: Target, value: str | bytes
) -> None:
    _refused(target, "GET", "/api/v1/user", value)


api_keys = st.one_of(
    st.from_regex(r"\Achk_[0-9a-f]{16}_[A-Za-z0-9_-]{0,60}\Z"),
    # As a client sends text: its UTF-8 bytes on the wire.
    st.from_regex(r"\Achk_[^_]{0,20}_?.{0,20}\Z").map(lambda t: t.encode().decode("latin-1")),
    header_text,
    st.binary(min_size=1, max_size=60),
).filter(sendable)


@FUZZ
@given(value=api_keys)
def test_bad_api_keys_never_open_the_management_api(target: Target, value: str | bytes) -> None:
    resp = target.request("GET", "/api/v1/user", headers={"X-Api-Key": value})
    assert_client_error(resp)
    assert resp.status_code in (400, 401, 429), resp.status_code
    target.assert_serving()


@FUZZ
@given(payload=st.builds(claims, sub=st.sampled_from(["root", "writer"])), data=st.data())
def test_a_real_signature_over_another_payload_is_refused(
    target: Target, real_token: str, payload: dict[str, Any], data: st.DataObject
) -> None:
    header, _, signature = real_token.split(".")
    forged = f"{header}.{b64url(json.dumps(payload).encode())}.{signature}"
    path = data.draw(st.sampled_from([f"/v2/{REPO}/tags/list", "/api/v1/user"]))
    _refused(target, "GET", path, "Bearer " + forged)


def _granted(token: str) -> list[dict[str, Any]]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["access"]


scopes = st.one_of(
    st.builds(
        lambda name, actions: f"repository:{name}:{actions}",
        st.sampled_from([REPO, f"{TENANT}/other", "other/tenant/app", "fuzz/reg"]) | text_any,
        st.sampled_from(["pull", "push", "pull,push", "*", "delete", ""]) | text_any,
    ),
    st.sampled_from(["registry:catalog:*", "repository::", ":::", ""]),
    text_any,
)


@FUZZ
@given(
    scope=st.lists(scopes, max_size=4),
    service=st.none() | text_any,
    extra=st.dictionaries(text_any, text_any, max_size=3),
)
def test_anonymous_token_requests_grant_nothing_on_a_private_tenant(
    target: Target, scope: list[str], service: str | None, extra: dict[str, str]
) -> None:
    params: list[tuple[str, str]] = [("scope", s) for s in scope] + list(extra.items())
    if service is not None:
        params.append(("service", service))
    resp = target.request("GET", "/v2/token", params=params)
    assert_not_a_server_error(resp)
    if resp.status_code == 200:
        for claim in _granted(resp.json()["token"]):
            assert claim["actions"] == [] or claim["type"] == "registry", claim
    target.assert_serving()


@FUZZ
@given(scope=st.lists(scopes, max_size=4))
def test_a_writers_token_grants_only_its_own_tenant(target: Target, scope: list[str]) -> None:
    resp = target.request(
        "GET", "/v2/token", auth=target.writer, params=[("scope", s) for s in scope]
    )
    assert_not_a_server_error(resp)
    if resp.status_code == 200:
        for claim in _granted(resp.json()["token"]):
            if claim["type"] == "repository" and claim["actions"]:
                assert claim["name"].startswith(f"{TENANT}/"), claim
                assert set(claim["actions"]) <= {"pull", "push"}, claim
    target.assert_serving()


form_fields = st.dictionaries(
    st.sampled_from(
        ["grant_type", "username", "password", "scope", "service", "client_id", "refresh_token"]
    )
    | text_any,
    text_any | st.sampled_from(["password", "refresh_token", "writer", "root"]),
    max_size=6,
)


def _oauth_or_spec_error(resp: Any) -> None:
    """The token endpoint's POST speaks OAuth2 (``{"error": ...}``) or the spec's body."""
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:300])
    body = resp.json()
    assert isinstance(body.get("error"), str) or body["errors"], body


@FUZZ
@given(form=form_fields)
def test_token_endpoint_form_bodies_get_a_token_only_for_a_real_login(
    target: Target, form: dict[str, str]
) -> None:
    resp = target.request("POST", "/v2/token", data=form)
    assert resp.status_code < 500, resp.text[:300]
    if resp.status_code == 200:
        assert form.get("grant_type") == "password"
        assert form.get("username") in ("writer", "root")  # only the seeded logins exist
    else:
        _oauth_or_spec_error(resp)
    target.assert_serving()


@FUZZ
@given(
    body=st.binary(max_size=400),
    content_type=st.sampled_from(
        [
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=xyz",
            "multipart/form-data",
            "application/json",
            "text/plain",
        ]
    ),
)
def test_token_endpoint_raw_bodies_are_refused(
    target: Target, body: bytes, content_type: str
) -> None:
    resp = target.request("POST", "/v2/token", data=body, headers={"Content-Type": content_type})
    assert resp.status_code != 200 or b"grant_type=password" in body
    if resp.status_code != 200:
        _oauth_or_spec_error(resp)
    target.assert_serving()


def test_a_real_token_still_works_after_the_fuzzing(target: Target, real_token: str) -> None:
    resp = target.request(
        "GET", f"/v2/{REPO}/tags/list", headers={"Authorization": f"Bearer {real_token}"}
    )
    assert resp.status_code == 200, resp.text


def test_hmac_helper_matches_the_servers_signature_shape(real_token: str) -> None:
    """The forgeries above are well-formed: same three parts as the server's tokens."""
    assert len(real_token.split(".")) == 3
    assert hashlib.sha256().digest_size == len(
        base64.urlsafe_b64decode(real_token.split(".")[2] + "==")
    )
