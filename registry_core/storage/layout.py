"""Where every object lives: the one module that builds storage paths.

The layout is CNCF Distribution's (``docker/registry/v2/...``), so a folder
or bucket written by Distribution 2.x is served by Cargohold and back. State
Distribution has no place for lives where Distribution's walkers never look:
``_referrers`` inside a repository (Distribution skips ``_`` directories other
than its own) and the top-level ``cargohold/`` prefix.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Final

from ..digest import Digest
from ..errors import DigestInvalid
from ..names import RepositoryName, Tenant

ROOT: Final = "docker/registry/v2"
BLOBS: Final = f"{ROOT}/blobs"
REPOSITORIES: Final = f"{ROOT}/repositories"
EXTRA: Final = "cargohold"
"""Prefix for Cargohold's own state (tenancy, keys, ...)."""


def blob_dir(digest: Digest) -> str:
    return f"{BLOBS}/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"


def blob_data(digest: Digest) -> str:
    return f"{blob_dir(digest)}/data"


def repository(name: RepositoryName) -> str:
    return f"{REPOSITORIES}/{name.value}"


def tenant_repositories(tenant: Tenant) -> str:
    """The folder holding every repository of ``OWNER/REGISTRY``."""
    return f"{REPOSITORIES}/{tenant.owner}/{tenant.registry}"


def layer_link(name: RepositoryName, digest: Digest) -> str:
    return f"{repository(name)}/_layers/{digest.algorithm}/{digest.hex}/link"


def layer_link_dir(name: RepositoryName, digest: Digest) -> str:
    return f"{repository(name)}/_layers/{digest.algorithm}/{digest.hex}"


def manifests_dir(name: RepositoryName) -> str:
    return f"{repository(name)}/_manifests"


def revisions_root(name: RepositoryName) -> str:
    return f"{manifests_dir(name)}/revisions"


def revisions_dir(name: RepositoryName, algorithm: str) -> str:
    return f"{revisions_root(name)}/{algorithm}"


def revision_dir(name: RepositoryName, digest: Digest) -> str:
    return f"{revisions_dir(name, digest.algorithm)}/{digest.hex}"


def revision_link(name: RepositoryName, digest: Digest) -> str:
    return f"{revision_dir(name, digest)}/link"


def tags_dir(name: RepositoryName) -> str:
    return f"{manifests_dir(name)}/tags"


def tag_dir(name: RepositoryName, tag: str) -> str:
    return f"{tags_dir(name)}/{tag}"


def tag_current_link(name: RepositoryName, tag: str) -> str:
    return f"{tag_dir(name, tag)}/current/link"


def tag_index_link(name: RepositoryName, tag: str, digest: Digest) -> str:
    return f"{tag_dir(name, tag)}/index/{digest.algorithm}/{digest.hex}/link"


def referrers_dir(name: RepositoryName, subject: Digest) -> str:
    return f"{repository(name)}/_referrers/{subject.algorithm}/{subject.hex}"


def referrer_entry(name: RepositoryName, subject: Digest, referrer: Digest) -> str:
    return f"{referrers_dir(name, subject)}/{referrer.algorithm}-{referrer.hex}"


def uploads_dir(name: RepositoryName) -> str:
    return f"{repository(name)}/_uploads"


def upload_dir(name: RepositoryName, upload_id: str) -> str:
    return f"{uploads_dir(name)}/{upload_id}"


def upload_data(name: RepositoryName, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/data"


def may_be_appended(path: str) -> bool:
    """Whether *path* may ever be opened for append (``declare_layout`` on a driver).

    In the registry's own trees only an upload's data is: every link, record, blob and
    setting is written whole. Paths outside them (a library user's) may be, for all the
    registry knows. Repository names cannot hold ``_uploads``: their parts never start
    with ``_``.
    """
    if path.startswith(f"{REPOSITORIES}/"):
        return path.endswith("/data") and "/_uploads/" in path
    return not (path.startswith(f"{ROOT}/") or path.startswith(f"{EXTRA}/"))


def is_leaf(path: str) -> bool:
    """Whether *path* is never a folder (``declare_layout`` on a driver): blob data, links,
    an upload's data and start record. Other paths may be, for all the driver is told."""
    if path.startswith(f"{BLOBS}/"):
        return path.endswith("/data")
    if path.startswith(f"{REPOSITORIES}/"):
        # By shape, never by name alone: a repository may be named ".../link", and so may
        # a tag (``_manifests/tags/link`` is a folder).
        return _LEAF_LINK.search(path) is not None or (
            "/_uploads/" in path and path.endswith(("/data", "/startedat"))
        )
    return False


_LEAF_LINK = re.compile(
    r"/(?:_layers/[^/]+/[^/]+|_manifests/revisions/[^/]+/[^/]+"
    r"|_manifests/tags/[^/]+/(?:current|index/[^/]+/[^/]+))/link$"
)
"""The links: a layer's, a revision's, a tag's current one and its index entries."""


def upload_started_at(name: RepositoryName, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/startedat"


UPLOAD_MARKERS: Final = f"{EXTRA}/uploads"


def upload_markers_dir(tenant: Tenant) -> str:
    """One empty object per open upload session of the tenant (for the session limits)."""
    return f"{UPLOAD_MARKERS}/{tenant.owner}/{tenant.registry}"


def upload_marker(tenant: Tenant, marker: str) -> str:
    return f"{upload_markers_dir(tenant)}/{marker}"


def repository_tree(parts: Sequence[str]) -> str:
    """A folder of the repositories tree by its name components (``()``: the tree's root).

    The manifest feed walks the tree one folder at a time, in name order, to resume
    where its last pass stopped; a repository is a folder holding ``_manifests``.
    """
    return "/".join((REPOSITORIES, *parts))


def repository_tree_manifests(parts: Sequence[str]) -> str:
    """The ``_manifests`` folder of the repository at *parts* (see :func:`repository_tree`)."""
    return f"{repository_tree(parts)}/{MANIFESTS_DIR}"


MANIFESTS_DIR: Final = "_manifests"


def is_repository_internal(directory: str) -> bool:
    """True for a repository's own ``_name`` directories (layers, manifests, uploads...)."""
    return directory.rsplit("/", 1)[-1].startswith("_")


def repository_from_manifests_dir(path: str) -> str | None:
    """The repository name owning a ``.../_manifests`` path, or None."""
    prefix = REPOSITORIES + "/"
    if not path.startswith(prefix) or not path.endswith("/_manifests"):
        return None
    return path[len(prefix) : -len("/_manifests")]


# -- Cargohold's own state: tenancy and auth (one small object per record) -----------

TENANCY: Final = f"{EXTRA}/tenancy"
AUTH: Final = f"{EXTRA}/auth"


def users_dir() -> str:
    return f"{TENANCY}/users"


def user_record(name: str) -> str:
    return f"{users_dir()}/{name}"


def owners_dir() -> str:
    return f"{TENANCY}/owners"


def owner_record(owner: str) -> str:
    return f"{owners_dir()}/{owner}"


def registries_dir(owner: str) -> str:
    return f"{TENANCY}/registries/{owner}"


def registry_record(owner: str, registry: str) -> str:
    return f"{registries_dir(owner)}/{registry}"


def members_dir(owner: str, registry: str | None) -> str:
    """Members of an owner (``registry`` None: every registry it holds) or of one registry."""
    return f"{TENANCY}/members/{owner}/{registry or '_owner'}"


def member_record(owner: str, registry: str | None, user: str) -> str:
    return f"{members_dir(owner, registry)}/{user}"


def api_keys_dir() -> str:
    return f"{AUTH}/api-keys"


def api_key_record(key_id: str) -> str:
    return f"{api_keys_dir()}/{key_id}"


def tokens_dir() -> str:
    return f"{AUTH}/tokens"


def token_record(token_id: str) -> str:
    return f"{tokens_dir()}/{token_id}"


def token_pulls_dir(token_id: str) -> str:
    return f"{AUTH}/token-pulls/{token_id}"


def token_pull(token_id: str, pull_id: str) -> str:
    return f"{token_pulls_dir(token_id)}/{pull_id}"


def signing_key() -> str:
    return f"{AUTH}/signing-key"


def readiness_probe() -> str:
    """A small object the readiness check writes and reads back."""
    return f"{EXTRA}/readiness-probe"


# -- Per-tenant settings (upstreams, retention, quotas, policies): one object per kind --------

SETTINGS: Final = f"{EXTRA}/settings"


def settings_owner_dir(owner: str) -> str:
    """Every settings folder of an owner (its own ``_owner`` and one per registry)."""
    return f"{SETTINGS}/{owner}"


def settings_dir(owner: str, registry: str | None) -> str:
    """Settings of an owner (``registry`` None) or of one of its registries."""
    return f"{SETTINGS}/{owner}/{registry or '_owner'}"


def settings_record(owner: str, registry: str | None, kind: str) -> str:
    return f"{settings_dir(owner, registry)}/{kind}"


# -- Background jobs: numbered leases and per-job state (cursors, marks) -----------------

JOBS: Final = f"{EXTRA}/jobs"


def job_dir(job: str) -> str:
    return f"{JOBS}/{job}"


def job_lease_dir(job: str) -> str:
    """The numbered leases of one exclusive job (``<epoch>`` objects)."""
    return f"{job_dir(job)}/lease"


def job_lease(job: str, epoch: int) -> str:
    return f"{job_lease_dir(job)}/{epoch}"


def job_state(job: str, name: str) -> str:
    """A small state object a job keeps between runs (a cursor, the last report)."""
    return f"{job_dir(job)}/state/{name}"


# -- Lifecycle of tenants' content: usage ledgers, pull times -------------------------------

USAGE: Final = f"{EXTRA}/usage"
PULLS: Final = f"{EXTRA}/pulls"


def layers_root(name: RepositoryName) -> str:
    """The blob links of one repository (``<algorithm>/<hex>/link``)."""
    return f"{repository(name)}/_layers"


def layers_dir(name: RepositoryName, algorithm: str) -> str:
    return f"{layers_root(name)}/{algorithm}"


def usage_owners() -> str:
    return USAGE


def usage_dir(owner: str, registry: str | None = None) -> str:
    """The usage ledger of one registry (or the folder of an owner's ledgers)."""
    return f"{USAGE}/{owner}" if registry is None else f"{USAGE}/{owner}/{registry}"


def usage_snapshot(owner: str, registry: str) -> str:
    """The compacted totals of a registry's usage."""
    return f"{usage_dir(owner, registry)}/snapshot"


def usage_deltas_dir(owner: str, registry: str) -> str:
    return f"{usage_dir(owner, registry)}/deltas"


def usage_delta(owner: str, registry: str, name: str) -> str:
    """One usage event (its values are in its name, so summing needs a listing only)."""
    return f"{usage_deltas_dir(owner, registry)}/{name}"


def usage_charged_dir(owner: str, registry: str) -> str:
    return f"{usage_dir(owner, registry)}/charged"


def usage_charged(owner: str, registry: str, digest: Digest) -> str:
    """Marker: blob *digest* is counted in the registry's usage (created if absent)."""
    return f"{usage_charged_dir(owner, registry)}/{digest.algorithm}-{digest.hex}"


def pulls_dir(name: RepositoryName) -> str:
    return f"{PULLS}/{name.value}/_pulled"


def pull_time(name: RepositoryName, digest: Digest) -> str:
    """When a manifest of a repository was last pulled (written at most hourly per process)."""
    return f"{pulls_dir(name)}/{digest.algorithm}-{digest.hex}"


# -- Garbage collection: blobs set aside while a sweep re-checks, and reading walked paths ---


def gc_trash_dir() -> str:
    """Blob data a GC run has set aside (invisible to clients) until its re-check is done."""
    return f"{job_dir('gc')}/trash"


def gc_trash_run(run: str) -> str:
    return f"{gc_trash_dir()}/{run}"


def gc_trash(run: str, digest: Digest) -> str:
    return f"{gc_trash_run(run)}/{digest.algorithm}/{digest.hex}"


def gc_removed_revisions(run: str, name: RepositoryName) -> str:
    """The revisions of *name* a GC run is removing, and when its mark started
    (``registry_core.storage.removed_revisions``); kept only until the run's relink."""
    return f"{gc_trash_run(run)}/_revisions/{name.value}/_removed"


def digest_from_blob_data(path: str) -> tuple[str, str] | None:
    """``(algorithm, hex)`` of a ``blobs/<alg>/<xx>/<hex>/data`` path, or None."""
    parts = path[len(BLOBS) + 1 :].split("/") if path.startswith(BLOBS + "/") else []
    if len(parts) != 4 or parts[3] != "data" or not parts[2].startswith(parts[1]):
        return None
    return parts[0], parts[2]


def digest_from_trash(path: str) -> tuple[str, str, str] | None:
    """``(run, algorithm, hex)`` of a :func:`gc_trash` path, or None."""
    prefix = gc_trash_dir() + "/"
    parts = path[len(prefix) :].split("/") if path.startswith(prefix) else []
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


def classify_repository_object(path: str) -> tuple[str, str, tuple[str, ...]] | None:
    """What a walked object below ``repositories/`` is: ``(repository, kind, fields)``.

    Kinds: ``layer`` (algorithm, hex), ``revision`` (algorithm, hex), ``tag`` (tag,),
    ``tag-index`` (tag, algorithm, hex), ``referrer`` (subject algorithm, subject hex,
    referrer ``alg-hex``), ``upload`` (upload id, file); anything else is None.
    """
    if not path.startswith(REPOSITORIES + "/"):
        return None
    parts = path[len(REPOSITORIES) + 1 :].split("/")
    position = next((i for i, part in enumerate(parts) if part.startswith("_")), None)
    if position is None:
        return None
    repo, kind, rest = "/".join(parts[:position]), parts[position], parts[position + 1 :]
    if not repo:
        return None
    if kind == "_layers" and len(rest) == 3 and rest[2] == "link":
        return repo, "layer", (rest[0], rest[1])
    if kind == "_referrers" and len(rest) == 3:
        return repo, "referrer", (rest[0], rest[1], rest[2])
    if kind == "_uploads" and len(rest) == 2:
        return repo, "upload", (rest[0], rest[1])
    if kind != "_manifests" or not rest:
        return None
    if rest[0] == "revisions" and len(rest) == 4 and rest[3] == "link":
        return repo, "revision", (rest[1], rest[2])
    if rest[0] == "tags" and len(rest) == 4 and rest[2:] == ["current", "link"]:
        return repo, "tag", (rest[1],)
    if rest[0] == "tags" and len(rest) == 6 and rest[2] == "index" and rest[5] == "link":
        return repo, "tag-index", (rest[1], rest[3], rest[4])
    return None


# -- Scrub: blobs found corrupt are moved aside, not destroyed -------------------------------


def scrub_quarantine(digest: Digest) -> str:
    """Where scrub --repair moves a blob whose bytes do not match its digest."""
    return f"{job_dir('scrub')}/quarantine/{digest.algorithm}/{digest.hex}"


def blob_algorithm_dir(algorithm: str) -> str:
    return f"{BLOBS}/{algorithm}"


def blob_prefix_dir(algorithm: str, prefix: str) -> str:
    """One of the 256 two-hex-digit folders of an algorithm's blobs."""
    return f"{BLOBS}/{algorithm}/{prefix}"


# -- Secrets at rest and the pull-through cache ------------------------------------------


def secrets_canary() -> str:
    """A small value sealed with the first key-encryption key that touched this storage."""
    return f"{EXTRA}/secrets/canary"


def proxy_tag_origin(name: RepositoryName, tag: str) -> str:
    """Which upstream a cached tag came from and when (absent: the tag was pushed here)."""
    return f"{repository(name)}/_proxy/tags/{tag}"


# -- The website's per-repository tag index and its login sessions -------------------------

TAG_INDEX: Final = f"{EXTRA}/tag-index"
SESSIONS: Final = f"{EXTRA}/sessions"


def tag_index_entries(name: RepositoryName) -> str:
    """One empty object per tag, named ``TAG@PUSHED_MS@SIZE`` (``_`` never starts a name)."""
    return f"{TAG_INDEX}/{name.value}/_entries"


def tag_index_entry(name: RepositoryName, entry: str) -> str:
    return f"{tag_index_entries(name)}/{entry}"


def tag_index_pointer(name: RepositoryName, tag: str) -> str:
    """The name of the tag's current entry, so a rewrite removes the old one without a listing."""
    return f"{TAG_INDEX}/{name.value}/_tags/{tag}"


def session_record(key: str) -> str:
    """A website session, stored under the hash of its cookie (never the cookie itself)."""
    return f"{SESSIONS}/{key}"


# -- Security scanning: the OSV database (generations per source) and results per digest ----

VULNDB: Final = f"{EXTRA}/vulndb"
SCANS: Final = f"{EXTRA}/scans"


def _escape_name(text: str) -> str:
    """A package or ecosystem name as one path component (``=XX`` escapes, reversible)."""
    out = []
    for char in text:
        if char.isascii() and (char.isalnum() or char in "._-+:@,"):
            out.append(char)
        else:
            out.extend(f"={byte:02X}" for byte in char.encode())
    escaped = "".join(out)
    return escaped if escaped not in ("", ".", "..") else f"={escaped}"


def vulndb_current() -> str:
    """Which generation of each imported source is live (one object: the atomic switch)."""
    return f"{VULNDB}/current"


def vulndb_source_dir(source: str) -> str:
    return f"{VULNDB}/sources/{source}"


def vulndb_generation_dir(source: str, generation: str) -> str:
    return f"{vulndb_source_dir(source)}/{generation}"


def vulndb_package(source: str, generation: str, ecosystem: str, package: str) -> str:
    """The advisories of one (ecosystem, package) in one generation of one source."""
    return (
        f"{vulndb_generation_dir(source, generation)}/"
        f"{_escape_name(ecosystem)}/{_escape_name(package)}"
    )


def scan_dir(digest: Digest) -> str:
    """Scan state of one manifest digest (content-addressed: shared by every tenant)."""
    return f"{SCANS}/{digest.algorithm}/{digest.hex}"


def scan_status(digest: Digest) -> str:
    return f"{scan_dir(digest)}/status"


def scan_report(digest: Digest) -> str:
    return f"{scan_dir(digest)}/report"


def scan_claim(digest: Digest, attempt: int) -> str:
    """Created if absent by the process that runs attempt *attempt* of a scan."""
    return f"{scan_dir(digest)}/claims/{attempt}"


def scan_claims_dir(digest: Digest) -> str:
    return f"{scan_dir(digest)}/claims"


def scans_algorithm_dir(algorithm: str) -> str:
    return f"{SCANS}/{algorithm}"


SCAN_QUEUE: Final = f"{EXTRA}/scan-queue"
"""Manifests waiting for a scan, for whichever process (server or worker) takes them:
one flat object per (digest, repository), so one listing shows the whole queue."""


def scan_queue_entry(digest: Digest, repository: str) -> str:
    """``<algorithm>-<hex>.<hash of the repository>``; the repository itself is the body."""
    key = hashlib.sha256(repository.encode()).hexdigest()[:32]
    return f"{SCAN_QUEUE}/{digest.algorithm}-{digest.hex}.{key}"


def scan_queue_object(name: str) -> str:
    """The queue entry listed as *name* in :data:`SCAN_QUEUE`."""
    return f"{SCAN_QUEUE}/{name}"


def scan_queue_entry_digest(name: str) -> Digest | None:
    """The digest a :func:`scan_queue_entry` name (last path component) waits for."""
    head, _, _key = name.partition(".")
    algorithm, _, hex_part = head.partition("-")
    try:
        return Digest.parse(f"{algorithm}:{hex_part}")
    except DigestInvalid:
        return None


# -- Signing: per-registry keys (private halves sealed) and simple signatures ---------------

SIGNING: Final = f"{EXTRA}/signing"


def signing_keys_dir(tenant: Tenant) -> str:
    """The signing keys of ``OWNER/REGISTRY``: one record per key, ``<kind>-<seq>``."""
    return f"{SIGNING}/keys/{tenant.owner}/{tenant.registry}"


def signing_key_record(tenant: Tenant, key_id: str) -> str:
    return f"{signing_keys_dir(tenant)}/{key_id}"


def simple_signatures_dir(name: RepositoryName, digest: Digest) -> str:
    """The simple (OpenPGP) signatures of one manifest, served by the extension API."""
    return f"{repository(name)}/_signatures/{digest.algorithm}/{digest.hex}"


def simple_signature(name: RepositoryName, digest: Digest, signature_id: str) -> str:
    return f"{simple_signatures_dir(name, digest)}/{signature_id}"


# -- The website's per-registry repository index (registry_core/storage/repo_index.py) ------

REPO_INDEX: Final = f"{EXTRA}/repo-index"


def repo_index_dir(tenant: Tenant) -> str:
    return f"{REPO_INDEX}/{tenant.owner}/{tenant.registry}"


def repo_index_summary(tenant: Tenant) -> str:
    """The registry's index: its shards (name ranges and counts), rewritten by the job only."""
    return f"{repo_index_dir(tenant)}/summary"


def repo_index_shard(tenant: Tenant, shard: str) -> str:
    """One shard of sorted image names, named by its content's hash (immutable)."""
    return f"{repo_index_dir(tenant)}/shards/{shard}"


def repo_index_hints(tenant: Tenant) -> str:
    """One empty object per repository created or emptied since the last compaction."""
    return f"{repo_index_dir(tenant)}/hints"


def repo_index_hint(tenant: Tenant, hint: str) -> str:
    return f"{repo_index_hints(tenant)}/{hint}"


def repo_index_dirty_dir() -> str:
    """Registries whose index has hints to compact (``OWNER@REGISTRY``, one object each)."""
    return f"{REPO_INDEX}/_dirty"


def repo_index_dirty(tenant: Tenant) -> str:
    return f"{repo_index_dirty_dir()}/{tenant.owner}@{tenant.registry}"
