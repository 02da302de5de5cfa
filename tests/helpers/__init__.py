"""Reusable pieces for the test suite: servers, offline image builders, process helpers.

Import from here (``from tests.helpers import RegistryServer, sample_image, skopeo``)
or from the submodules:

- :mod:`tests.helpers.server`: ``RegistryServer``, ``DistributionServer``, ``free_port``,
  ``wait_for_port``, ``http_status``
- :mod:`tests.helpers.images`: ``make_layer``, ``build_image``, ``build_index``,
  ``sample_image``, ``sample_multiarch``, ``write_oci_layout``, ``write_docker_archive``
- :mod:`tests.helpers.procs`: ``run``, ``skopeo``, ``client_env``, ``peak_rss_kib``
- :mod:`tests.helpers.registry_api`: ``push_image``, ``push_blob``, ``get_manifest``
- :mod:`tests.helpers.upstreams`: upstream peers for pull-through tests
  (``HtpasswdDistribution``, ``start_cargohold_upstream``, ``seed``, ``start_pull_through``)
- :mod:`tests.helpers.fault_proxy`: ``FaultProxy`` and its ``Fault`` rules (corrupt,
  truncate, stall, 429/503, refused connections), counting what reached the peer
"""

from __future__ import annotations

import secrets

from .images import (
    Blob,
    DockerArchive,
    Image,
    Index,
    build_image,
    build_index,
    make_layer,
    make_layer_tar,
    make_random_layer,
    sample_image,
    sample_multiarch,
    sha256_digest,
    write_docker_archive,
    write_oci_layout,
)
from .procs import (
    CommandError,
    client_env,
    current_rss_kib,
    peak_rss_kib,
    run,
    skopeo,
)
from .server import (
    DistributionServer,
    ManagedServer,
    RegistryServer,
    free_port,
    http_status,
    wait_for_port,
)

__all__ = [
    "Blob",
    "CommandError",
    "DistributionServer",
    "DockerArchive",
    "Image",
    "Index",
    "ManagedServer",
    "RegistryServer",
    "build_image",
    "build_index",
    "client_env",
    "current_rss_kib",
    "free_port",
    "http_status",
    "make_layer",
    "make_layer_tar",
    "make_random_layer",
    "peak_rss_kib",
    "run",
    "sample_image",
    "sample_multiarch",
    "sha256_digest",
    "skopeo",
    "unique_repo_name",
    "wait_for_port",
    "write_docker_archive",
    "write_oci_layout",
]


def unique_repo_name(owner: str = "test", registry: str = "reg", image: str = "img") -> str:
    """A fresh, valid repository name: ``OWNER/REGISTRY/IMAGE-<8 hex>`` (lowercase)."""
    return f"{owner}/{registry}/{image}-{secrets.token_hex(4)}"
