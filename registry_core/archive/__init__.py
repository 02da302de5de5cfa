"""Whole images as files: import ``docker save`` tarballs and OCI layout archives, export them.

``import_archive`` reads the classic ``docker save`` format, Docker 25+'s
combined format and OCI image-layout archives (plain, gzip or zstd
compressed), verifies every blob, then stores the images all or nothing.
``export_docker_archive`` writes one image as a tarball ``docker load`` and
``skopeo copy docker-archive:`` accept. No HTTP here: the server and the
command line are callers, as any service embedding the library can be.
"""

from .errors import ArchiveInvalid, ArchiveTooLarge
from .exporter import (
    DockerArchiveStream,
    ExportedImage,
    ImageSource,
    RepositorySource,
    docker_archive_stream,
    export_docker_archive,
)
from .importer import (
    ImportedImage,
    ImportOptions,
    ImportResult,
    Workspace,
    import_archive,
)

__all__ = [
    "ArchiveInvalid",
    "ArchiveTooLarge",
    "DockerArchiveStream",
    "ExportedImage",
    "ImageSource",
    "ImportOptions",
    "ImportResult",
    "ImportedImage",
    "RepositorySource",
    "Workspace",
    "docker_archive_stream",
    "export_docker_archive",
    "import_archive",
]
