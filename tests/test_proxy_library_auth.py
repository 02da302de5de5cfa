"""The Docker token flow towards upstreams, against a scripted upstream on 127.0.0.1.

Bearer challenges are answered at the realm with the scope of the request (with
Basic credentials when configured, anonymously otherwise) and the token is reused
until it expires; Basic is sent where the upstream asks for Basic; nothing is sent
where nothing is asked.
"""

from __future__ import annotations

import asyncio

import pytest

from registry_core.names import Reference, Tenant
from registry_core.proxy import UpstreamSpec, UpstreamUnavailable, parse_challenge
from tests.helpers import sample_image
from tests.proxy_support import TENANT, ScriptedUpstream, pull_through

REPO = f"{TENANT}/app"


def spec(upstream: ScriptedUpstream, *, credentials: bool = True, **fields: object) -> UpstreamSpec:
    login = {"username": upstream.username, "password": upstream.password} if credentials else {}
    return UpstreamSpec(name="up", url=upstream.url, **login, **fields)  # type: ignore[arg-type]


async def pull_tags(upstream: ScriptedUpstream, *tags: str, **fields: object) -> None:
    async with pull_through(spec(upstream, **fields)) as proxy:
        repo = proxy.registry.repository(REPO)
        for tag in tags:
            await proxy.manifest(repo, Reference.parse(tag))


def with_images(upstream: ScriptedUpstream, *tags: str) -> ScriptedUpstream:
    for tag in tags:
        upstream.add_image("app", tag, sample_image(f"auth-{tag}"))
    return upstream


async def test_a_bearer_token_is_asked_once_and_reused_until_it_expires():
    async with ScriptedUpstream(auth="bearer").running() as upstream:
        with_images(upstream, "1", "2", "3")

        await pull_tags(upstream, "1", "2", "3")

        assert upstream.token_requests == 1
        # The first GET learns the challenge from its 401 (no /v2/ ping before it); the
        # other tags go with the token at once.
        assert upstream.count("GET", "/manifests/") == 4
        assert upstream.authorizations.count("") == 1


async def test_an_expired_bearer_token_is_renewed():
    async with ScriptedUpstream(auth="bearer", token_lifetime=1).running() as upstream:
        with_images(upstream, "1", "2")
        async with pull_through(spec(upstream)) as proxy:
            repo = proxy.registry.repository(REPO)
            await proxy.manifest(repo, Reference.parse("1"))
            await asyncio.sleep(1.2)
            await proxy.manifest(repo, Reference.parse("2"))

        assert upstream.token_requests == 2


async def test_an_anonymous_bearer_token_is_asked_without_credentials():
    async with ScriptedUpstream(auth="bearer", anonymous_tokens=True).running() as upstream:
        with_images(upstream, "1")

        await pull_tags(upstream, "1", credentials=False)

        assert upstream.token_requests == 1
        assert any(header.startswith("Bearer ") for header in upstream.authorizations)


async def test_basic_credentials_go_where_the_upstream_asks_for_basic():
    async with ScriptedUpstream(auth="basic").running() as upstream:
        with_images(upstream, "1")

        await pull_tags(upstream, "1")

        assert upstream.token_requests == 0
        assert upstream.authorizations[-1].startswith("Basic ")


async def test_nothing_is_sent_to_an_upstream_that_asks_for_nothing():
    async with ScriptedUpstream().running() as upstream:
        with_images(upstream, "1")

        await pull_tags(upstream, "1")

        assert set(upstream.authorizations) == {""}


async def test_credentials_the_token_service_refuses_are_an_error_naming_the_upstream():
    async with ScriptedUpstream(auth="bearer", password="other").running() as upstream:
        with_images(upstream, "1")
        async with pull_through(
            UpstreamSpec(name="up", url=upstream.url, username="puller", password="wrong")
        ) as proxy:
            with pytest.raises(UpstreamUnavailable) as caught:
                await proxy.manifest(proxy.registry.repository(REPO), Reference.parse("1"))

        assert "upstream up" in caught.value.message
        assert "wrong" not in caught.value.message


def test_a_bearer_challenge_is_parsed_into_its_parameters():
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:library/nginx:pull"'
    )

    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:library/nginx:pull",
    }


async def test_registries_with_the_same_upstream_login_but_another_password_never_share_a_token():
    async with ScriptedUpstream(auth="bearer").running() as upstream:
        with_images(upstream, "1")
        async with pull_through(
            UpstreamSpec(name="up", url=upstream.url, username="puller", password="pull-secret")
        ) as proxy:
            repo = proxy.registry.repository(REPO)
            await proxy.manifest(repo, Reference.parse("1"))
            await proxy.upstreams.add(
                Tenant("other", "reg"),
                UpstreamSpec(name="up", url=upstream.url, username="puller", password="guess"),
            )

            with pytest.raises(UpstreamUnavailable):
                await proxy.manifest(
                    proxy.registry.repository("other/reg/app"), Reference.parse("1")
                )
