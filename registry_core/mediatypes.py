"""Media types the registry knows, and the limits that go with them."""

from __future__ import annotations

from typing import Final

DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1: Final = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED: Final = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY: Final = "application/vnd.oci.empty.v1+json"
OCI_LAYOUT_HEADER: Final = "application/vnd.oci.layout.header.v1+json"

IMAGE_MANIFESTS: Final = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEXES: Final = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
MANIFEST_TYPES: Final = IMAGE_MANIFESTS | INDEXES
SCHEMA1_TYPES: Final = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})

MAX_MANIFEST_SIZE: Final = 4 * 1024 * 1024
"""Manifests above this are refused with 413 SIZE_INVALID (the spec's recommended floor)."""
