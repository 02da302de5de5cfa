"""Where every object lives: the one module that builds storage paths.

The layout is CNCF Distribution's (``docker/registry/v2/...``), so a folder
or bucket written by Distribution 2.x is served by Cargohold and back. State
Distribution has no place for lives where Distribution's walkers never look:
``_referrers`` inside a repository (Distribution skips ``_`` directories other
than its own) and the top-level ``cargohold/`` prefix.
"""

from __future__ import annotations

from typing import Final

from ..digest import Digest
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


def upload_started_at(name: RepositoryName, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/startedat"


UPLOAD_MARKERS: Final = f"{EXTRA}/uploads"


def upload_markers_dir(tenant: Tenant) -> str:
    """One empty object per open upload session of the tenant (for the session limits)."""
    return f"{UPLOAD_MARKERS}/{tenant.owner}/{tenant.registry}"


def upload_marker(tenant: Tenant, marker: str) -> str:
    return f"{upload_markers_dir(tenant)}/{marker}"


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


def settings_dir(owner: str, registry: str | None) -> str:
    """Settings of an owner (``registry`` None) or of one of its registries."""
    return f"{SETTINGS}/{owner}/{registry or '_owner'}"


def settings_record(owner: str, registry: str | None, kind: str) -> str:
    return f"{settings_dir(owner, registry)}/{kind}"
