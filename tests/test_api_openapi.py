"""The OpenAPI document at ``/api/v1/openapi.json`` is true to the server.

Three checks keep it so: the document is valid OpenAPI 3.1; the set of
``(method, path)`` operations under ``/api/v1/`` in the document is exactly the
set of routes in the application's router; and real responses of every
operation (success and the main errors) match the status codes and schemas the
document lists for it (``tests.api_support.ApiClient`` checks every reply it
reads, and the last test asserts that every operation was exercised).
"""

from __future__ import annotations

import pytest
from openapi_spec_validator import validate

from registry_server.http.openapi import document
from tests import scanning_support
from tests.api_support import (
    ANONYMOUS,
    ApiClient,
    Login,
    World,
    assert_error,
    remembered_hash,
    seed_world,
    serve_api,
)
from tests.helpers.images import write_docker_archive

API = "/api/v1"
PROD = f"{API}/registries/acme/prod"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture
async def api():
    async with serve_api() as client:
        yield client


@pytest.fixture
async def world(api: ApiClient, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setattr("registry_core.tenancy.hash_password", remembered_hash)
    return await seed_world(api.tenancy)


def router_operations(api: ApiClient) -> set[tuple[str, str]]:
    """``(METHOD, canonical path)`` of every ``/api/v1/`` route (HEAD twins of GET aside)."""
    found = set()
    for route in api.app.router.routes():
        resource = route.resource
        if resource is None or not resource.canonical.startswith(f"{API}/"):
            continue
        if route.method == "HEAD":
            continue
        found.add((route.method, resource.canonical))
    return found


def document_operations(doc: dict) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in METHODS
    }


async def test_the_document_is_served_without_credentials_and_is_valid_openapi_3_1(api):
    reply = await api.get(f"{API}/openapi.json", ANONYMOUS)

    assert reply.status == 200
    assert reply.content_type == "application/json"
    served = reply.json()
    assert served["openapi"] == "3.1.0"
    validate(served)
    assert served == document()


async def test_every_api_route_is_documented_and_every_documented_route_exists(api):
    in_router = router_operations(api)
    in_document = document_operations(document())

    assert in_router - in_document == set(), "routes missing from the OpenAPI document"
    assert in_document - in_router == set(), "documented operations the server does not serve"


def test_the_security_schemes_are_api_key_basic_and_bearer():
    doc = document()

    assert doc["components"]["securitySchemes"] == {
        "apiKey": {
            "type": "apiKey",
            "in": "header",
            "name": "X-Api-Key",
            "description": "A user's API key.",
        },
        "basic": {
            "type": "http",
            "scheme": "basic",
            "description": "A user name with its password or one of its API keys.",
        },
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "A user's token from the /v2/token endpoint.",
        },
    }
    assert doc["security"] == [{"apiKey": []}, {"basic": []}, {"bearer": []}]


def test_operations_open_to_anyone_on_a_public_registry_make_credentials_optional():
    """Reading a public registry's signing keys or exporting one of its images needs no
    credentials (``test_anyone_reads_the_keys_of_a_public_registry``): the document says
    so with an empty security requirement, which schemathesis' "API accepts requests
    without authentication" check reads as intended. Every other secured one lists only
    the three schemes."""
    doc = document()
    optional = {
        ("get", "/api/v1/registries/{owner}/{registry}/signing-keys"),
        ("get", "/api/v1/registries/{owner}/{registry}/archives"),
    }
    schemes = [{"apiKey": []}, {"basic": []}, {"bearer": []}]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if (method, path) in optional:
                assert operation["security"] == [{}, *schemes], (method, path)
            elif operation["security"]:
                assert operation["security"] == schemes, (method, path)


def test_every_operation_documents_its_errors_in_the_one_error_schema():
    doc = document()
    error_schema = {"$ref": "#/components/schemas/ErrorBody"}

    for path, item in doc["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            if operation["security"]:
                assert "401" in responses, (method, path)
            if (
                "requestBody" in operation
                and "application/json" in operation["requestBody"]["content"]
            ):
                assert "400" in responses, (method, path)
            for status, response in responses.items():
                if int(status) < 400:
                    continue
                name = response["$ref"].rsplit("/", 1)[1]
                target = doc["components"]["responses"][name]
                assert target["content"]["application/json"]["schema"] == error_schema


def test_every_path_parameter_is_declared_once():
    doc = document()

    for path, item in doc["paths"].items():
        names = sorted(part[1:-1] for part in path.split("/") if part.startswith("{"))
        for method, operation in item.items():
            declared = sorted(p["name"] for p in operation["parameters"] if p["in"] == "path")
            assert declared == names, (method, path)


async def test_real_responses_of_every_operation_match_the_document(api, world, tmp_path):
    """Drive each operation's success path and main errors; the client validates each reply."""
    root, admin, reader = world.key("root"), world.key("prod-admin"), world.key("reader")
    writer, outsider = world.key("writer"), world.key("outsider")
    await api.push_image("acme/prod/app", "1.0", seed="doc")

    # users and API keys
    assert (
        await api.get(f"{API}/user", Login.basic("reader", world.passwords["reader"]))
    ).status == 200
    assert (await api.get(f"{API}/user")).status == 401
    assert (await api.get(f"{API}/users", root)).status == 200
    assert (await api.get(f"{API}/users", reader)).status == 403
    assert (
        await api.post(f"{API}/users", root, json_body={"name": "doc", "password": "p"})
    ).status == 201
    assert (
        await api.post(f"{API}/users", root, json_body={"name": "doc", "password": "p"})
    ).status == 409
    assert (await api.post(f"{API}/users", root, json_body={"nme": "x"})).status == 400
    assert (await api.get(f"{API}/users/doc", root)).status == 200
    assert (await api.get(f"{API}/users/doc", reader)).status == 404
    assert (await api.patch(f"{API}/users/doc", root, json_body={"superuser": True})).status == 200
    assert (
        await api.patch(f"{API}/users/reader", reader, json_body={"superuser": True})
    ).status == 403
    assert (await api.get(f"{API}/users/doc/api-keys", root)).status == 200
    created = await api.post(f"{API}/users/doc/api-keys", root, json_body={"expires_in": "1d"})
    assert created.status == 201
    assert (
        await api.post(f"{API}/users/doc/api-keys", root, json_body={"expires_in": "x"})
    ).status == 400
    key_id = created.json()["id"]
    assert (await api.delete(f"{API}/users/doc/api-keys/{key_id}", root)).status == 204
    assert (await api.delete(f"{API}/users/doc/api-keys/{key_id}", reader)).status == 404
    assert (await api.delete(f"{API}/users/doc", root)).status == 204
    assert (await api.delete(f"{API}/users/reader", reader)).status == 403

    # owners
    assert (await api.get(f"{API}/owners", reader)).status == 200
    assert (await api.post(f"{API}/owners", root, json_body={"name": "docs"})).status == 201
    assert (await api.post(f"{API}/owners", reader, json_body={"name": "docs2"})).status == 403
    assert (await api.get(f"{API}/owners/acme", reader)).status == 200
    assert (await api.get(f"{API}/owners/acme", outsider)).status == 404
    assert (await api.delete(f"{API}/owners/acme", root)).status == 409
    assert (await api.delete(f"{API}/owners/docs", root)).status == 204

    # registries
    assert (await api.get(f"{API}/owners/acme/registries", reader)).status == 200
    new = await api.post(
        f"{API}/owners/acme/registries", world.key("acme-admin"), json_body={"name": "x"}
    )
    assert new.status == 201
    assert (
        await api.post(f"{API}/owners/acme/registries", admin, json_body={"name": "y"})
    ).status == 403
    assert (await api.get(PROD, reader)).status == 200
    assert (await api.get(PROD, outsider)).status == 404
    assert (await api.patch(PROD, admin, json_body={"visibility": "private"})).status == 200
    assert (await api.patch(PROD, reader, json_body={"visibility": "public"})).status == 403
    assert (await api.delete(PROD, reader)).status == 403
    assert (await api.delete(f"{API}/registries/acme/x", admin)).status == 404
    assert (await api.delete(f"{API}/registries/acme/x", world.key("acme-admin"))).status == 204

    # members
    assert (await api.get(f"{API}/owners/acme/members", world.key("acme-admin"))).status == 200
    body = {"user": "nobody", "role": "read"}
    assert (
        await api.put(f"{API}/owners/acme/members", world.key("acme-admin"), json_body=body)
    ).status == 200
    assert (
        await api.delete(f"{API}/owners/acme/members/nobody", world.key("acme-admin"))
    ).status == 204
    assert (
        await api.delete(f"{API}/owners/acme/members/nobody", world.key("acme-admin"))
    ).status == 404
    assert (await api.get(f"{PROD}/members", admin)).status == 200
    assert (await api.put(f"{PROD}/members", admin, json_body=body)).status == 200
    assert (await api.put(f"{PROD}/members", admin, json_body={"user": 1})).status == 400
    assert (await api.delete(f"{PROD}/members/nobody", admin)).status == 204
    assert (await api.get(f"{PROD}/members", reader)).status == 403

    # tokens
    token = await api.post(f"{PROD}/tokens", admin, json_body={"max_pulls": 5, "images": "app"})
    assert token.status == 201
    assert (await api.get(f"{PROD}/tokens", admin)).status == 200
    assert (await api.delete(f"{PROD}/tokens/{token.json()['id']}", admin)).status == 204
    assert (await api.post(f"{PROD}/tokens", writer)).status == 403

    # content
    assert (await api.get(f"{PROD}/repositories", reader)).status == 200
    assert (await api.get(f"{PROD}/repositories/app/tags", reader)).status == 200
    assert (await api.get(f"{PROD}/repositories/app/manifests", reader)).status == 200
    assert (await api.get(f"{PROD}/repositories/none/tags", reader)).status == 404
    assert (await api.get(f"{PROD}/repositories/BAD/manifests", reader)).status == 400

    # upstreams (pull-through): admins of the registry only, never a password in an answer
    upstream = {"name": "hub", "url": "https://registry-1.docker.io", "password": "s3cret"}
    upstream["username"] = "someone"
    assert (await api.post(f"{PROD}/upstreams", admin, json_body=upstream)).status == 201
    assert (await api.post(f"{PROD}/upstreams", admin, json_body=upstream)).status == 409
    assert (await api.post(f"{PROD}/upstreams", admin, json_body={"name": "x"})).status == 400
    assert (await api.post(f"{PROD}/upstreams", reader, json_body=upstream)).status == 403
    assert (await api.get(f"{PROD}/upstreams", admin)).status == 200
    assert (await api.get(f"{PROD}/upstreams/hub", admin)).status == 200
    assert (await api.delete(f"{PROD}/upstreams/hub", admin)).status == 204
    assert (await api.delete(f"{PROD}/upstreams/hub", admin)).status == 404

    # archives (routes of registry_server.http.archives, documented in the same document)
    archive = tmp_path / "app.tar"
    write_docker_archive(archive, "imported:1.0", [{"hello.txt": "hello\n"}])
    imported = await api.post(f"{PROD}/archives", writer, data=archive.read_bytes())
    assert imported.status == 201, imported.body
    assert (await api.post(f"{PROD}/archives", reader, data=archive.read_bytes())).status == 403
    exported = await api.get(f"{PROD}/archives", writer, params={"image": "imported:1.0"})
    assert exported.status == 200
    assert (
        await api.get(f"{PROD}/archives", outsider, params={"image": "imported:1.0"})
    ).status == 403

    # lifecycle rules (routes of registry_server.http.lifecycle_api)
    rules = {"keep_last": 5, "delete_untagged_after": "7d", "protected": ["latest"]}
    assert (await api.get(f"{PROD}/retention", reader)).status == 200
    assert (await api.put(f"{PROD}/retention", admin, json_body=rules)).status == 200
    assert (await api.put(f"{PROD}/retention", reader, json_body=rules)).status == 403
    bad_rules = {"delete_older_than": "soon"}
    assert (await api.put(f"{PROD}/retention", admin, json_body=bad_rules)).status == 400
    dry = {"dry_run": True}
    assert (await api.post(f"{PROD}/retention/run", admin, json_body=dry)).status == 200
    assert (await api.delete(f"{PROD}/retention", admin)).status == 204
    patterns = {"patterns": ["v*"]}
    assert (await api.get(f"{PROD}/immutable-tags", reader)).status == 200
    assert (await api.put(f"{PROD}/immutable-tags", admin, json_body=patterns)).status == 200
    assert (await api.put(f"{PROD}/immutable-tags", reader, json_body=patterns)).status == 403
    assert (await api.delete(f"{PROD}/immutable-tags", admin)).status == 204
    limits = {"max_bytes": "1GiB", "max_images": 100}
    assert (await api.get(f"{PROD}/quota", reader)).status == 200
    assert (await api.put(f"{PROD}/quota", root, json_body=limits)).status == 200
    assert (await api.put(f"{PROD}/quota", admin, json_body=limits)).status == 403
    assert (await api.put(f"{PROD}/quota", root, json_body={"max_bytes": "lots"})).status == 400
    assert (await api.delete(f"{PROD}/quota", root)).status == 204
    assert (await api.get(f"{API}/owners/acme/quota", reader)).status == 200
    assert (await api.get(f"{API}/owners/acme/quota", outsider)).status == 404
    assert (await api.put(f"{API}/owners/acme/quota", root, json_body=limits)).status == 200
    assert (await api.delete(f"{API}/owners/acme/quota", root)).status == 204

    # signing keys (routes of registry_server.http.signatures)
    assert (await api.get(f"{PROD}/signing-keys", reader)).status == 200
    assert (await api.get(f"{PROD}/signing-keys", outsider)).status == 404
    assert (await api.get(f"{PROD}/signing-keys")).status == 401
    simple_off = {"simple": False}
    assert (await api.put(f"{PROD}/signing", admin, json_body=simple_off)).status == 200
    assert (await api.put(f"{PROD}/signing", reader, json_body=simple_off)).status == 403
    assert (await api.put(f"{PROD}/signing", admin, json_body={"simple": "no"})).status == 400

    # security scanning (routes of registry_server.http.scanning_api)
    digest = await scanning_support.push(api, scanning_support.alpine_image(), "acme/prod/scanned")
    assert (await scanning_support.scanned(api, reader, digest, "scanned"))["status"] == "done"
    scanned_manifest = f"{PROD}/repositories/scanned/manifests/{digest}"
    assert (await api.get(f"{scanned_manifest}/vulnerabilities", reader)).status == 200
    assert (await api.get(f"{scanned_manifest}/sbom", reader)).status == 200
    assert (await api.post(f"{scanned_manifest}/scan", admin)).status == 202
    assert (await api.post(f"{scanned_manifest}/scan", reader)).status == 403
    policy = {"block_severity": "critical", "allowlist": [{"id": "CVE-2024-0001"}]}
    assert (await api.get(f"{PROD}/scan-policy", reader)).status == 200
    assert (await api.put(f"{PROD}/scan-policy", admin, json_body=policy)).status == 200
    assert (
        await api.put(f"{PROD}/scan-policy", admin, json_body={"block_severity": 3})
    ).status == 400
    assert (await api.delete(f"{PROD}/scan-policy", admin)).status == 204

    # the document itself
    assert (await api.get(f"{API}/openapi.json")).status == 200

    exercised = {(method, template) for method, template, status in api.checked if status < 300}
    assert router_operations(api) - exercised == set(), "operations whose success went unchecked"


async def test_undocumented_statuses_would_be_caught(api, world):
    """The checker itself: a reply whose status the operation does not list fails."""
    from tests.api_support import Reply, check_reply

    fake = Reply(418, (await api.get(f"{API}/user", world.key("reader"))).headers, b"")

    with pytest.raises(AssertionError, match="does not list"):
        check_reply(document(), "GET", f"{API}/user", fake)


async def test_a_wrong_body_would_be_caught(api, world):
    from tests.api_support import Reply, check_reply

    real = await api.get(f"{API}/user", world.key("reader"))
    fake = Reply(200, real.headers, b'{"kind": "robot", "name": 1}')

    with pytest.raises(Exception, match=r"robot|not valid|is not of type"):
        check_reply(document(), "GET", f"{API}/user", fake)
    assert_error(await api.get(f"{API}/user"), 401, "UNAUTHORIZED")
