"""Minimal distribution-API client (requests) for pushing/pulling test images over HTTP.

Speaks only the spec's plain flows (monolithic POST+PUT blob upload, manifest PUT/GET),
so it works against Cargohold and CNCF Distribution alike. No auth negotiation: pass
``auth=("user", "secret")`` for Basic, or a prepared ``requests.Session``.
"""

from __future__ import annotations

import urllib.parse

import requests

from .images import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Image,
    Index,
    sha256_digest,
)

__all__ = ["MANIFEST_ACCEPT", "get_manifest", "new_session", "push_blob", "push_image"]

MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST])


def new_session(auth: tuple[str, str] | None = None) -> requests.Session:
    """A session that ignores proxy/netrc settings from the environment."""
    session = requests.Session()
    session.trust_env = False
    if auth is not None:
        session.auth = auth
    return session


def _raise_for(resp: requests.Response, what: str) -> None:
    if resp.status_code >= 400:
        raise AssertionError(
            f"{what}: {resp.request.method} {resp.url} -> {resp.status_code}\n{resp.text[:4000]}"
        )


def push_blob(
    base_url: str,
    repo: str,
    data: bytes,
    *,
    session: requests.Session | None = None,
) -> str:
    """Upload ``data`` to ``repo`` (POST then PUT ?digest=); returns the digest."""
    s = session or new_session()
    digest = sha256_digest(data)
    resp = s.post(f"{base_url}/v2/{repo}/blobs/uploads/")
    _raise_for(resp, "start upload")
    location = urllib.parse.urljoin(f"{base_url}/", resp.headers["Location"])
    sep = "&" if "?" in location else "?"
    resp = s.put(
        f"{location}{sep}digest={urllib.parse.quote(digest)}",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    _raise_for(resp, "finish upload")
    return digest


def _put_manifest(
    s: requests.Session, base_url: str, repo: str, ref: str, body: bytes, media_type: str
) -> None:
    resp = s.put(
        f"{base_url}/v2/{repo}/manifests/{ref}", data=body, headers={"Content-Type": media_type}
    )
    _raise_for(resp, f"put manifest {ref}")


def push_image(
    base_url: str,
    repo: str,
    image: Image | Index,
    tag: str | None = "latest",
    *,
    session: requests.Session | None = None,
    auth: tuple[str, str] | None = None,
) -> str:
    """Push an :class:`Image` or :class:`Index` (blobs, child manifests, then the top).

    The top manifest is put by ``tag`` (by digest when ``tag`` is None). Returns its digest.
    """
    s = session or new_session(auth)
    for blob in image.blobs():
        head = s.head(f"{base_url}/v2/{repo}/blobs/{blob.digest}")
        if head.status_code != 200:
            push_blob(base_url, repo, blob.data, session=s)
    if isinstance(image, Index):
        for child in image.images:
            _put_manifest(s, base_url, repo, child.digest, child.manifest, child.media_type)
    _put_manifest(s, base_url, repo, tag or image.digest, image.manifest, image.media_type)
    return image.digest


def get_manifest(
    base_url: str,
    repo: str,
    ref: str,
    *,
    accept: str = MANIFEST_ACCEPT,
    session: requests.Session | None = None,
    auth: tuple[str, str] | None = None,
) -> requests.Response:
    """``GET /v2/<repo>/manifests/<ref>`` with a broad Accept header (not raised for status)."""
    s = session or new_session(auth)
    return s.get(f"{base_url}/v2/{repo}/manifests/{ref}", headers={"Accept": accept})
