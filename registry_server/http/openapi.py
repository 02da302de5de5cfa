"""The OpenAPI 3.1 document of the ``/api/v1/`` API, served at ``/api/v1/openapi.json``.

Request and response schemas are generated from the very msgspec Structs the
handlers decode and encode (:mod:`.management`), so a body cannot drift from
its description; the list of operations is written out here, by hand, and a
test walks the application's router to keep it exactly the set of routes the
server answers (``tests/test_api_openapi.py``). The archive routes of
:mod:`.api` are described here too. This module serves a document and holds no
API logic.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import attrs
import msgspec
from aiohttp import web

from registry_core.errors import NotFound
from registry_core.lifecycle.immutable import ImmutableTags
from registry_core.lifecycle.retention import RetentionReport, RetentionSpec
from registry_core.proxy import UpstreamSpec, UpstreamView

from ..state import state_of
from . import lifecycle_api as lc
from . import management as m
from . import scanning_api as sc
from . import signatures as sg

OPENAPI_PATH = f"{m.API_PREFIX}/openapi.json"
JSON = "application/json"


# -- the archive routes' bodies (built by registry_core.archive, documented here) ---------


class ImportedImage(msgspec.Struct, kw_only=True):
    repository: str
    tags: list[str]
    digest: str
    media_type: str
    config_digests: list[str]
    platforms: list[str]
    layers: int
    size: int
    """Manifest, config and layers as stored, in bytes."""
    verbatim: bool
    """True when the archive's own manifest was stored byte for byte."""
    source: str


class ArchiveImport(msgspec.Struct, kw_only=True):
    images: list[ImportedImage]
    blobs_stored: int
    blobs_existing: int
    bytes_stored: int
    archive_compression: str
    seconds: float


# -- operations -------------------------------------------------------------------------------


@attrs.frozen
class Query:
    name: str
    description: str
    schema: dict[str, Any] = attrs.field(factory=lambda: {"type": "string"})
    required: bool = False


@attrs.frozen
class Operation:
    method: str
    path: str
    """As the router's canonical form: ``{name}`` for every path parameter."""
    summary: str
    tag: str
    response: Any = None
    """The Struct (or list type) of the success body; None: no body."""
    status: int = 200
    body: Any = None
    errors: tuple[int, ...] = (401, 403, 404)
    description: str = ""
    query: tuple[Query, ...] = ()
    security: tuple[str, ...] = ("apiKey", "basic", "bearer")
    anonymous: bool = False
    """Credentials are optional: anyone may call it on a public registry (OpenAPI's empty
    security requirement first), as ``docker pull`` may."""
    body_content: dict[str, Any] | None = None
    """A non-JSON request body (archives)."""
    response_content: dict[str, Any] | None = None
    """A non-JSON success body (archives)."""


_USER = f"{m.API_PREFIX}/users/{{name}}"
_OWNER = f"{m.API_PREFIX}/owners/{{owner}}"
_REGISTRY = f"{m.API_PREFIX}/registries/{{owner}}/{{registry}}"
_IMAGE = f"{_REGISTRY}/repositories/{{image}}"
_BINARY = {"type": "string", "format": "binary"}

_NAME_SCHEMA = {"type": "string", "pattern": m.NAME_PATTERN, "minLength": 1, "maxLength": 64}
_COMPONENT = m.NAME_PATTERN.removeprefix("^").removesuffix("(?!\\n)$")
IMAGE_PATTERN = rf"^{_COMPONENT}(?:/{_COMPONENT})*(?!\n)$"
# A full name is at most 255 characters: OWNER/REGISTRY/ takes up to 130 of them.
_IMAGE_SCHEMA = {"type": "string", "pattern": IMAGE_PATTERN, "minLength": 1, "maxLength": 125}
_PARAMETER_SCHEMAS: dict[str, dict[str, Any]] = {
    "name": _NAME_SCHEMA,
    "owner": _NAME_SCHEMA,
    "registry": _NAME_SCHEMA,
    "user": _NAME_SCHEMA,
    "image": _IMAGE_SCHEMA,
}
_TAG = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
_IMAGE_NAME = IMAGE_PATTERN.removeprefix("^").removesuffix("(?!\\n)$")
_IMAGE_REF = rf"{_IMAGE_NAME}(?::{_TAG}|@sha256:[a-f0-9]{{64}})?"

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET",
        OPENAPI_PATH,
        "This document",
        "meta",
        response=None,
        errors=(404,),
        security=(),
        response_content={JSON: {"schema": {"type": "object"}}},
    ),
    Operation("GET", f"{m.API_PREFIX}/user", "Who am I", "users", m.WhoAmI, errors=(401,)),
    Operation("GET", f"{m.API_PREFIX}/users", "List users", "users", m.UserList, errors=(401, 403)),
    Operation(
        "POST",
        f"{m.API_PREFIX}/users",
        "Create a user",
        "users",
        m.User,
        status=201,
        body=m.NewUser,
        errors=(400, 401, 403, 409),
        description="Superusers only.",
    ),
    Operation(
        "GET",
        _USER,
        "Show a user",
        "users",
        m.User,
        description="A user may show itself; superusers any user.",
    ),
    Operation(
        "PATCH",
        _USER,
        "Change a user's password or superuser flag",
        "users",
        m.User,
        body=m.UserChange,
        errors=(400, 401, 403, 404, 409),
        description="A user may change its own password; only a superuser may change "
        "other users or the superuser flag. Demoting the last superuser is refused (409).",
    ),
    Operation(
        "DELETE",
        _USER,
        "Delete a user",
        "users",
        status=204,
        errors=(401, 403, 404, 409),
        description="Superusers only. Revokes the user's API keys and removes its memberships. "
        "Deleting the last superuser is refused (409).",
    ),
    Operation(
        "GET",
        f"{_USER}/api-keys",
        "List a user's API keys",
        "api-keys",
        m.ApiKeyList,
        description="The user itself or a superuser. Secrets are never shown here.",
    ),
    Operation(
        "POST",
        f"{_USER}/api-keys",
        "Create an API key",
        "api-keys",
        m.CreatedApiKey,
        status=201,
        body=m.NewApiKey,
        errors=(400, 401, 403, 404),
        description="The user itself or a superuser. The response carries the secret, "
        "once; it is stored only as a hash.",
    ),
    Operation(
        "DELETE",
        f"{_USER}/api-keys/{{id}}",
        "Revoke an API key",
        "api-keys",
        status=204,
        description="Refused by this server process at once; by others within auth.cache_ttl.",
    ),
    Operation(
        "GET",
        f"{m.API_PREFIX}/owners",
        "List owners",
        "owners",
        m.OwnerList,
        errors=(401, 403),
        description="Owners the caller holds a role on (on the owner or one of its "
        "registries); every owner for superusers.",
    ),
    Operation(
        "POST",
        f"{m.API_PREFIX}/owners",
        "Create an owner",
        "owners",
        m.Owner,
        status=201,
        body=m.NewOwner,
        errors=(400, 401, 403, 409),
        description="Superusers only.",
    ),
    Operation("GET", _OWNER, "Show an owner", "owners", m.Owner),
    Operation(
        "DELETE",
        _OWNER,
        "Delete an owner",
        "owners",
        status=204,
        errors=(401, 403, 404, 409),
        description="Superusers only; the owner must hold no registry (409 otherwise).",
    ),
    Operation(
        "GET",
        f"{_OWNER}/registries",
        "List an owner's registries",
        "registries",
        m.RegistryList,
        description="The registries of the owner the caller can pull from.",
    ),
    Operation(
        "POST",
        f"{_OWNER}/registries",
        "Create a registry",
        "registries",
        m.Registry,
        status=201,
        body=m.NewRegistry,
        errors=(400, 401, 403, 404, 409),
        description="Admins of the owner and superusers.",
    ),
    Operation(
        "GET",
        f"{_OWNER}/members",
        "List the owner's members",
        "members",
        m.MemberList,
        description="Roles on the owner apply to all its registries. Admins of the owner.",
    ),
    Operation(
        "PUT",
        f"{_OWNER}/members",
        "Give a user a role on the owner",
        "members",
        m.Member,
        body=m.MemberChange,
        errors=(400, 401, 403, 404),
        description="Creates or replaces the membership. Admins of the owner.",
    ),
    Operation(
        "DELETE",
        f"{_OWNER}/members/{{user}}",
        "Remove a member of the owner",
        "members",
        status=204,
    ),
    Operation(
        "GET",
        _REGISTRY,
        "Show a registry",
        "registries",
        m.Registry,
        description="Anyone who can pull from it.",
    ),
    Operation(
        "PATCH",
        _REGISTRY,
        "Change a registry's visibility",
        "registries",
        m.Registry,
        body=m.RegistryChange,
        errors=(400, 401, 403, 404),
        description="Admins of the registry.",
    ),
    Operation(
        "DELETE",
        _REGISTRY,
        "Delete a registry",
        "registries",
        status=204,
        description="Admins of the registry. Its members and tokens go with it; its images "
        "stay in storage until garbage collection.",
    ),
    Operation(
        "GET",
        f"{_REGISTRY}/members",
        "List the registry's members",
        "members",
        m.MemberList,
        description="Roles given on this registry only. Admins of the registry.",
    ),
    Operation(
        "PUT",
        f"{_REGISTRY}/members",
        "Give a user a role on the registry",
        "members",
        m.Member,
        body=m.MemberChange,
        errors=(400, 401, 403, 404),
        description="Creates or replaces the membership. Admins of the registry.",
    ),
    Operation(
        "DELETE",
        f"{_REGISTRY}/members/{{user}}",
        "Remove a member of the registry",
        "members",
        status=204,
    ),
    Operation(
        "GET",
        f"{_REGISTRY}/tokens",
        "List the registry's entitlement tokens",
        "tokens",
        m.TokenList,
        description="Admins of the registry. Secrets are never shown here.",
    ),
    Operation(
        "POST",
        f"{_REGISTRY}/tokens",
        "Create an entitlement token",
        "tokens",
        m.CreatedToken,
        status=201,
        body=m.NewToken,
        errors=(400, 401, 403, 404),
        description="A read-only login for the registry: username OWNER/REGISTRY, password "
        "the secret, which this response carries once. Admins of the registry.",
    ),
    Operation(
        "DELETE",
        f"{_REGISTRY}/tokens/{{id}}",
        "Revoke an entitlement token",
        "tokens",
        status=204,
        description="Refused by this server process at once; by others within auth.cache_ttl. "
        "Bearer tokens already issued for it stay valid until they expire.",
    ),
    Operation(
        "GET",
        f"{_REGISTRY}/repositories",
        "List the registry's repositories",
        "content",
        m.RepositoryList,
        description="With the number of tags of each. Anyone who can pull from the registry.",
    ),
    Operation(
        "GET",
        f"{_IMAGE}/tags",
        "List a repository's tags",
        "content",
        m.TagList,
        errors=(400, 401, 403, 404),
        description="Each tag with its digest, media type and total size.",
    ),
    Operation(
        "GET",
        f"{_IMAGE}/manifests",
        "List a repository's manifests",
        "content",
        m.ManifestList,
        errors=(400, 401, 403, 404),
        description="Every manifest revision with its size, total size and tags.",
    ),
    Operation(
        "GET",
        f"{_REGISTRY}/upstreams",
        "List the registry's upstreams",
        "upstreams",
        m.UpstreamList,
        description="The registries it pulls through, sorted by priority then name. Admins "
        "of the registry. Passwords are never shown, only `has_credentials`.",
    ),
    Operation(
        "POST",
        f"{_REGISTRY}/upstreams",
        "Add an upstream",
        "upstreams",
        UpstreamView,
        status=201,
        body=UpstreamSpec,
        errors=(400, 401, 403, 404, 409),
        description="`url` is http(s)://host[:port]; `priority` lower is asked first (100); "
        "`password` (a password or a token) is write-only and stored encrypted; `tag_ttl` "
        "is seconds or a duration such as 10m; `images` a glob over image names; `prefix` "
        "a path prepended at the upstream. The upstream is not contacted here: where it "
        "may point is checked on every connection. 409 if the name exists. Admins of the "
        "registry; other server processes see the change within auth.cache_ttl.",
    ),
    Operation(
        "GET",
        f"{_REGISTRY}/upstreams/{{name}}",
        "Show an upstream",
        "upstreams",
        UpstreamView,
        description="`name` is the upstream's name. Admins of the registry.",
    ),
    Operation(
        "DELETE",
        f"{_REGISTRY}/upstreams/{{name}}",
        "Remove an upstream",
        "upstreams",
        status=204,
        description="`name` is the upstream's name. Content already cached stays. Admins of "
        "the registry.",
    ),
    Operation(
        "POST",
        f"{_REGISTRY}/archives",
        "Import an image archive",
        "archives",
        ArchiveImport,
        status=201,
        errors=(400, 401, 403, 404, 413),
        description="The body is a `docker save` tarball or an OCI layout archive (plain, "
        "gzip or zstd), imported all or nothing. Needs push (write role) on every "
        "repository written. With auth disabled the route is open.",
        query=(
            Query(
                "tag",
                "Extra NAME:TAG to tag an imported image with (repeatable).",
                {
                    "type": "array",
                    # Keeps a valid request line within limits.max_header_size.
                    "maxItems": 16,
                    "items": {
                        "type": "string",
                        "pattern": rf"^{_IMAGE_NAME}(?::{_TAG})?(?!\n)$",
                        "maxLength": 125,
                    },
                },
            ),
            Query(
                "compression",
                "How layers that arrive uncompressed are stored.",
                {"type": "string", "enum": ["gzip", "zstd"]},
            ),
        ),
        security=("apiKey", "basic", "bearer"),
        body_content={"application/octet-stream": {"schema": _BINARY}},
    ),
    Operation(
        "GET",
        f"{_REGISTRY}/archives",
        "Export an image as a docker save tarball",
        "archives",
        errors=(400, 401, 403, 404),
        anonymous=True,
        description="Needs pull on the repository (anyone may pull from a public registry). "
        "With auth disabled the route is open.",
        query=(
            Query(
                "image",
                "NAME:TAG or NAME@DIGEST inside the registry (NAME alone: the tag latest).",
                {
                    "type": "string",
                    "pattern": rf"^{_IMAGE_REF}(?!\n)$",
                    "minLength": 1,
                    # OWNER/REGISTRY/ and NAME stay within a name's 255 characters.
                    "maxLength": 125,
                },
                required=True,
            ),
            Query("repo_tag", "The RepoTags entry written into manifest.json."),
            Query("platform", "OS/ARCH[/VARIANT] to pick from a multi-platform image."),
        ),
        security=("apiKey", "basic", "bearer"),
        response_content={"application/x-tar": {"schema": _BINARY}},
    ),
)

_LIFECYCLE_ERRORS = (400, 401, 403, 404)
# The lifecycle routes of registry_server.http.lifecycle_api.
OPERATIONS += (
    Operation(
        "GET",
        f"{_REGISTRY}/retention",
        "Show a registry's retention rules",
        "lifecycle",
        lc.Retention,
        description="Anyone who can pull from the registry. Durations in seconds.",
    ),
    Operation(
        "PUT",
        f"{_REGISTRY}/retention",
        "Set a registry's retention rules",
        "lifecycle",
        lc.Retention,
        body=RetentionSpec,
        errors=_LIFECYCLE_ERRORS,
        description="Registry admins. Replaces every rule; durations are seconds or e.g. "
        "`30d`, `12h`. Protected patterns (globs) are never deleted by a rule.",
    ),
    Operation(
        "DELETE",
        f"{_REGISTRY}/retention",
        "Remove a registry's retention rules",
        "lifecycle",
        status=204,
        description="Registry admins. Rules of the TOML file, if any, apply again.",
    ),
    Operation(
        "POST",
        f"{_REGISTRY}/retention/run",
        "Apply a registry's retention rules now",
        "lifecycle",
        RetentionReport,
        body=lc.RetentionRun,
        errors=_LIFECYCLE_ERRORS,
        description="Registry admins. A dry run lists what would be deleted and deletes "
        "nothing. Deleted manifests take their attachments with them; GC frees the bytes.",
    ),
    Operation(
        "GET",
        f"{_REGISTRY}/immutable-tags",
        "Show a registry's immutable tag patterns",
        "lifecycle",
        ImmutableTags,
        description="Anyone who can pull from the registry.",
    ),
    Operation(
        "PUT",
        f"{_REGISTRY}/immutable-tags",
        "Set a registry's immutable tag patterns",
        "lifecycle",
        ImmutableTags,
        body=ImmutableTags,
        errors=_LIFECYCLE_ERRORS,
        description="Registry admins. Tags matching a pattern (`v*`; `*` for all) cannot "
        "be moved or deleted once set; attachment tags never are immutable.",
    ),
    Operation(
        "DELETE",
        f"{_REGISTRY}/immutable-tags",
        "Make every tag of a registry movable again",
        "lifecycle",
        status=204,
        description="Registry admins.",
    ),
    Operation(
        "GET",
        f"{_REGISTRY}/quota",
        "Show a registry's quota and usage",
        "lifecycle",
        m.Usage,
        description="Anyone who can pull from the registry.",
    ),
    Operation(
        "PUT",
        f"{_REGISTRY}/quota",
        "Set a registry's quota",
        "lifecycle",
        m.Usage,
        body=lc.QuotaChange,
        errors=_LIFECYCLE_ERRORS,
        description="Superusers only. Sizes are bytes or e.g. `10GiB`, `500MB`; the "
        "registry's usage is measured exactly when its quota is set.",
    ),
    Operation(
        "DELETE",
        f"{_REGISTRY}/quota",
        "Remove a registry's quota",
        "lifecycle",
        status=204,
        description="Superusers only.",
    ),
    Operation(
        "GET",
        f"{_OWNER}/quota",
        "Show an owner's quota and the usage of all its registries",
        "lifecycle",
        m.Usage,
    ),
    Operation(
        "PUT",
        f"{_OWNER}/quota",
        "Set an owner's quota (over all its registries)",
        "lifecycle",
        m.Usage,
        body=lc.QuotaChange,
        errors=_LIFECYCLE_ERRORS,
        description="Superusers only.",
    ),
    Operation(
        "DELETE",
        f"{_OWNER}/quota",
        "Remove an owner's quota",
        "lifecycle",
        status=204,
        description="Superusers only.",
    ),
)


_MANIFEST = f"{_IMAGE}/manifests/{{reference}}"
_SEVERITY_QUERY = Query(
    "severity",
    "Only findings at or above this severity.",
    {"type": "string", "enum": ["critical", "high", "medium", "low", "unknown"]},
)
# The scanning routes of registry_server.http.scanning_api.
OPERATIONS += (
    Operation(
        "GET",
        f"{_MANIFEST}/vulnerabilities",
        "Show a manifest's vulnerabilities",
        "scanning",
        sc.Vulnerabilities,
        errors=(400, 401, 403, 404),
        query=(_SEVERITY_QUERY,),
        description="Anyone who can pull. The scan `status` (queued, running, done, failed "
        "with its `reason`) and the findings per platform (an index: one entry per platform). "
        "404 when scanning is off on this server.",
    ),
    Operation(
        "GET",
        f"{_MANIFEST}/sbom",
        "Download a manifest's SBOM",
        "scanning",
        response_content={sc.SBOM_MEDIA_TYPE: {"schema": {"type": "object"}}},
        query=(Query("platform", "For an index: the platform (e.g. linux/arm64/v8)."),),
        description="Anyone who can pull. The CycloneDX 1.6 JSON inventory of the image; "
        "404 until the image is scanned.",
    ),
    Operation(
        "POST",
        f"{_MANIFEST}/scan",
        "Scan a manifest now",
        "scanning",
        sc.ScanRequested,
        status=202,
        description="Registry admins. Queues a scan (again, when one is done); the "
        "vulnerabilities route shows its progress.",
    ),
    Operation(
        "GET",
        f"{_REGISTRY}/scan-policy",
        "Show a registry's pull policy",
        "scanning",
        sc.PolicyBody,
        description="Anyone who can pull from the registry.",
    ),
    Operation(
        "PUT",
        f"{_REGISTRY}/scan-policy",
        "Set a registry's pull policy",
        "scanning",
        sc.PolicyBody,
        body=sc.PolicyBody,
        errors=(400, 401, 403, 404),
        description="Registry admins. Pulls of manifests with findings at or above "
        "`block_severity` (and, with `block_unscanned`, of unscanned ones) are refused with "
        "403 DENIED, except for the registry's admins; allowlisted ids (a finding's id or "
        "any alias; `expires` in Unix seconds) are ignored. Pushes are never refused.",
    ),
    Operation(
        "DELETE",
        f"{_REGISTRY}/scan-policy",
        "Remove a registry's pull policy",
        "scanning",
        status=204,
        description="Registry admins.",
    ),
)

# The signing route of registry_server.http.signatures.
OPERATIONS += (
    Operation(
        "GET",
        f"{_REGISTRY}/signing-keys",
        "Show a registry's public signing keys",
        "signing",
        sg.SigningKeys,
        errors=(401, 404),
        anonymous=True,
        description="Whoever can pull from the registry (anyone for a public one). The cosign "
        "keys as PEM, the simple-signing keys as armored OpenPGP, with fingerprints; retired "
        "keys stay listed so that older signatures keep verifying. When the registry signs, "
        "its keys are made on first use.",
    ),
    Operation(
        "PUT",
        f"{_REGISTRY}/signing",
        "Set whether and how a registry signs",
        "signing",
        sg.SigningKeys,
        body=sg.SigningChange,
        errors=(400, 401, 403, 404),
        description="Registry admins. `enabled`, `cosign` (sigstore attachments), `simple` "
        "(OpenPGP, served by the registry extension API) and `referrers` (cosign signatures "
        "also in the OCI 1.1 referrers form); null or left out: the server's `[signing]`. "
        "Answers with the registry's signing keys, as the signing-keys route does.",
    ),
)

PAGE_QUERY = (
    Query(
        "n",
        f"Items per page (default {m.PAGE_SIZE}). When more may follow, the response has a "
        '`Link: <URL>; rel="next"` header naming the next page.',
        {"type": "integer", "minimum": 1, "maximum": m.MAX_PAGE_SIZE},
    ),
    Query(
        "last",
        "List only items after this one (the name or id ending the previous page).",
        {"type": "string", "minLength": 1, "maxLength": 256},
    ),
)

LINKS: dict[tuple[str, str], tuple[str, dict[str, str]]] = {
    ("POST", f"{m.API_PREFIX}/users"): (_USER, {"name": "$response.body#/name"}),
    ("POST", f"{m.API_PREFIX}/owners"): (_OWNER, {"owner": "$response.body#/name"}),
    ("POST", f"{_OWNER}/registries"): (
        _REGISTRY,
        {"owner": "$response.body#/owner", "registry": "$response.body#/name"},
    ),
    ("POST", f"{_USER}/api-keys"): (
        f"{_USER}/api-keys/{{id}}",
        {"name": "$response.body#/user", "id": "$response.body#/id"},
    ),
    ("POST", f"{_REGISTRY}/tokens"): (
        f"{_REGISTRY}/tokens/{{id}}",
        {
            "owner": "$response.body#/owner",
            "registry": "$response.body#/registry",
            "id": "$response.body#/id",
        },
    ),
    ("PUT", f"{_OWNER}/members"): (
        f"{_OWNER}/members/{{user}}",
        {"owner": "$request.path.owner", "user": "$response.body#/user"},
    ),
    ("PUT", f"{_REGISTRY}/members"): (
        f"{_REGISTRY}/members/{{user}}",
        {
            "owner": "$request.path.owner",
            "registry": "$request.path.registry",
            "user": "$response.body#/user",
        },
    ),
}
"""What a creating operation's answer names, for the operations under the path it names
(OpenAPI links: clients and stateful testers follow them from a create to its uses)."""


def _links(op: Operation) -> dict[str, Any]:
    found = LINKS.get((op.method, op.path))
    if found is None:
        return {}
    base, parameters = found
    links: dict[str, Any] = {}
    for target in OPERATIONS:
        needed = set(re.findall(r"\{(\w+)\}", target.path))
        if needed and needed <= parameters.keys() and target.path.startswith(base):
            links[_operation_id(target)] = {
                "operationId": _operation_id(target),
                "parameters": {name: parameters[name] for name in sorted(needed)},
            }
    return links


PAGINATED = frozenset(
    ("GET", path)
    for path in (
        f"{m.API_PREFIX}/users",
        f"{_USER}/api-keys",
        f"{m.API_PREFIX}/owners",
        f"{_OWNER}/registries",
        f"{_OWNER}/members",
        f"{_REGISTRY}/members",
        f"{_REGISTRY}/tokens",
        f"{_REGISTRY}/repositories",
        f"{_IMAGE}/tags",
        f"{_IMAGE}/manifests",
    )
)
"""List operations answered a page at a time (``n``, ``last``, ``Link``)."""

_PARAMETERS = {
    "name": "A user name.",
    "owner": "An owner (an organisation or a user account).",
    "registry": "A registry of the owner.",
    "user": "A user name.",
    "id": "The record id (the part of the secret after its prefix).",
    "image": "The image name inside the registry; it may contain '/' (e.g. tools/build).",
    "reference": "A manifest digest (sha256:...) or a tag.",
}


_ERRORS = {
    400: ("BadRequest", "The request body or a name is invalid."),
    401: (
        "Unauthorized",
        "Credentials are missing, wrong, expired or revoked (UNAUTHORIZED).",
    ),
    403: (
        "Forbidden",
        "The caller can see the thing but lacks the right (DENIED); entitlement tokens "
        "are refused here except on /user.",
    ),
    404: (
        "NotFound",
        "No such thing, or one the caller cannot see: both answer alike. Every route "
        "answers 404 when the server runs with auth disabled (archives excepted).",
    ),
    409: (
        "Conflict",
        "The name is taken, the owner still holds registries, or the change would leave "
        "no superuser (CONFLICT).",
    ),
    413: ("TooLarge", "The upload is over archives.max_size."),
    414: (
        "UriTooLong",
        "The request line is over limits.max_header_size bytes (refused before any route).",
    ),
    429: ("TooManyRequests", "Too many failed logins from this address or for this user."),
    431: (
        "HeadersTooLarge",
        "A header is over limits.max_header_size bytes, or there are more than "
        "limits.max_headers (refused before any route).",
    ),
}

HTTP_LIMITS = (414, 431)
"""Answers of the HTTP layer itself, possible on every operation."""

_DESCRIPTION = """\
Manage Cargohold's tenants: users, API keys, owners, registries, members and entitlement
tokens, and list the repositories, tags and manifests of a registry.

Authenticate with an API key (`X-Api-Key: KEY`), HTTP Basic (a username with its
password or one of its API keys), or a user's bearer token from `/v2/token`.
Entitlement tokens pull images and nothing else.

Names the caller cannot see answer exactly like names that do not exist (404); what the
caller can see but may not do answers 403. Errors have one JSON shape,
`{"errors": [{"code", "message", "detail"?}]}`. Secrets (API keys, entitlement tokens)
appear only in the response that creates them.

The API is served only when the server runs with `[auth] enabled = true`; otherwise
every route here except the archive routes answers 404.
"""


def _parameters(operation: Operation) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": _PARAMETERS[name],
            "schema": _PARAMETER_SCHEMAS.get(name, {"type": "string"}),
        }
        for name in re.findall(r"\{(\w+)\}", operation.path)
    ]
    for query in operation.query:
        entry: dict[str, Any] = {
            "name": query.name,
            "in": "query",
            "required": query.required,
            "description": query.description,
            "schema": query.schema,
        }
        if query.schema.get("type") == "array":
            entry["explode"] = True
        found.append(entry)
    return found


def _has_required_field(kind: type[msgspec.Struct]) -> bool:
    return any(field.required for field in msgspec.structs.fields(kind))


def _operation_id(operation: Operation) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", " ", operation.summary).split()
    return words[0].lower() + "".join(w.capitalize() for w in words[1:])


@functools.cache
def document() -> dict[str, Any]:
    """The whole OpenAPI document (built once per process)."""
    kinds = [m.ErrorBody]
    for op in OPERATIONS:
        kinds += [k for k in (op.response, op.body) if k is not None]
    kinds = list(dict.fromkeys(kinds))
    schemas, components = msgspec.json.schema_components(
        kinds, ref_template="#/components/schemas/{name}"
    )
    schema_of = dict(zip(kinds, schemas, strict=True))

    responses: dict[str, Any] = {}
    for status, (name, text) in _ERRORS.items():
        response: dict[str, Any] = {
            "description": text,
            "content": {JSON: {"schema": schema_of[m.ErrorBody]}},
        }
        if status == 401:
            response["headers"] = {
                "WWW-Authenticate": {
                    "description": "The authentication challenge.",
                    "schema": {"type": "string"},
                }
            }
        if status == 429:
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before trying again.",
                    "schema": {"type": "integer"},
                }
            }
        responses[name] = response

    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paginated = (op.method, op.path) in PAGINATED
        if paginated:
            op = attrs.evolve(op, query=op.query + PAGE_QUERY, errors=(400, *op.errors))
        success: dict[str, Any] = {"description": op.summary}
        if paginated:
            success["headers"] = {
                "Link": {
                    "description": 'The next page, as `<URL>; rel="next"` (absent on the last).',
                    "schema": {"type": "string"},
                    "required": False,
                }
            }
        if op.response_content is not None:
            success["content"] = op.response_content
        elif op.response is not None:
            success["content"] = {JSON: {"schema": schema_of[op.response]}}
            if links := _links(op):
                success["links"] = links
        else:
            success["description"] = "Done; no body."
        entry: dict[str, Any] = {
            "operationId": _operation_id(op),
            "summary": op.summary,
            "tags": [op.tag],
            "parameters": _parameters(op),
            "responses": {
                str(op.status): success,
                **{
                    str(code): {"$ref": f"#/components/responses/{_ERRORS[code][0]}"}
                    for code in sorted({*op.errors, *HTTP_LIMITS, *((429,) if op.security else ())})
                },
            },
            "security": [*([{}] if op.anonymous else []), *({s: []} for s in op.security)],
        }
        if op.description:
            entry["description"] = op.description
        if op.body is not None:
            entry["requestBody"] = {
                # An empty body counts as {}: required only when some field is.
                "required": _has_required_field(op.body),
                "content": {JSON: {"schema": schema_of[op.body]}},
            }
        elif op.body_content is not None:
            entry["requestBody"] = {"required": True, "content": op.body_content}
        paths.setdefault(op.path, {})[op.method.lower()] = entry

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Cargohold management API",
            "version": "1",
            "description": _DESCRIPTION,
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": responses,
            "securitySchemes": {
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
            },
        },
        "security": [{"apiKey": []}, {"basic": []}, {"bearer": []}],
    }


def add_to(app: web.Application, enabled: bool) -> None:
    """Serve the document (only when the management API itself is served)."""
    body = msgspec.json.encode(document()) if enabled else b""

    async def serve(request: web.Request) -> web.Response:
        state_of(request).route = "management"
        if not enabled:
            raise NotFound(m.DISABLED_MESSAGE)
        return web.Response(body=body, content_type=JSON)

    app.router.add_route("GET", OPENAPI_PATH, serve)
