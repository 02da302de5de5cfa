"""Build image archives for the archive tests: OCI layouts, Docker 25's combined format,
compressed archives, and deliberately broken tarballs.

Everything is deterministic (mtime 0, owner 0:0, sorted JSON). Complements
:func:`tests.helpers.images.write_docker_archive` (the classic ``docker save`` format).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .images import (
    OCI_INDEX,
    OCI_MANIFEST,
    REF_NAME_ANNOTATION,
    Image,
    Index,
    canonical_json,
    sha256_digest,
)

__all__ = [
    "CONTAINERD_NAME_ANNOTATION",
    "OCI_LAYER_TAR",
    "Entry",
    "compress_file",
    "read_entries",
    "rewrite_archive",
    "tar_bytes",
    "uncompressed_image",
    "write_combined_archive",
    "write_oci_archive",
    "write_tar",
]

CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


@dataclass
class Entry:
    """One tar entry: a file (``data``), a directory, a symlink or a hard link."""

    name: str
    data: bytes | None = None
    kind: str = "file"  # file | dir | symlink | hardlink
    linkname: str = ""


def _info(entry: Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    if entry.kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    elif entry.kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, entry.linkname
    elif entry.kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, entry.linkname
    else:
        info.size = len(entry.data or b"")
    return info


def tar_bytes(entries: Iterable[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = _info(entry)
            data = io.BytesIO(entry.data or b"") if entry.kind == "file" else None
            tar.addfile(info, data)
    return buf.getvalue()


def write_tar(path: str | os.PathLike[str], entries: Iterable[Entry]) -> Path:
    out = Path(path)
    out.write_bytes(tar_bytes(entries))
    return out


def read_entries(path: str | os.PathLike[str]) -> list[Entry]:
    """Every entry of a tar, in order (for rewriting good archives into bad ones)."""
    entries = []
    with tarfile.open(path, mode="r:*") as tar:
        for info in tar:
            if info.isdir():
                entries.append(Entry(info.name, kind="dir"))
            elif info.issym():
                entries.append(Entry(info.name, kind="symlink", linkname=info.linkname))
            elif info.islnk():
                entries.append(Entry(info.name, kind="hardlink", linkname=info.linkname))
            else:
                handle = tar.extractfile(info)
                assert handle is not None
                entries.append(Entry(info.name, handle.read()))
    return entries


def rewrite_archive(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    change: Callable[[list[Entry]], list[Entry]],
) -> Path:
    return write_tar(dst, change(read_entries(src)))


def compress_file(path: str | os.PathLike[str], kind: str) -> Path:
    """``path`` compressed with gzip or zstd next to it (``.gz`` / ``.zst``)."""
    data = Path(path).read_bytes()
    if kind == "gzip":
        out = Path(f"{path}.gz")
        out.write_bytes(gzip.compress(data, mtime=0))
    elif kind == "zstd":
        import zstandard

        out = Path(f"{path}.zst")
        out.write_bytes(zstandard.ZstdCompressor().compress(data))
    else:
        raise ValueError(kind)
    return out


def _blob_entries(blobs: Iterable[bytes], seen: set[str]) -> list[Entry]:
    entries = []
    for data in blobs:
        hexdigest = hashlib.sha256(data).hexdigest()
        if hexdigest not in seen:
            seen.add(hexdigest)
            entries.append(Entry(f"blobs/sha256/{hexdigest}", data))
    return entries


def _layout_entries(
    tops: Sequence[tuple[Image | Index, Mapping[str, str]]],
) -> tuple[list[Entry], bytes]:
    seen: set[str] = set()
    entries = [
        Entry("blobs/", kind="dir"),
        Entry("blobs/sha256/", kind="dir"),
        Entry("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"})),
    ]
    descriptors = []
    for top, notes in tops:
        images = top.images if isinstance(top, Index) else (top,)
        for image in images:
            entries += _blob_entries([b.data for b in image.blobs()], seen)
            entries += _blob_entries([image.manifest], seen)
        if isinstance(top, Index):
            entries += _blob_entries([top.manifest], seen)
        descriptor = top.descriptor()
        if notes:
            descriptor["annotations"] = dict(notes)
        descriptors.append(descriptor)
    index = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors})
    return entries, index


def write_oci_archive(
    path: str | os.PathLike[str],
    tops: Sequence[tuple[Image | Index, Mapping[str, str]]],
) -> Path:
    """An OCI image-layout archive: each ``(image or index, annotations)`` in index.json."""
    entries, index = _layout_entries(tops)
    return write_tar(path, [*entries, Entry("index.json", index)])


def uncompressed_image(image: Image, layer_tars: Sequence[bytes]) -> Image:
    """``image`` re-made with uncompressed ``tar`` layers (Docker 25's graphdriver save)."""
    from .images import Blob

    layers = tuple(Blob(OCI_LAYER_TAR, data) for data in layer_tars)
    manifest = image.manifest_json()
    manifest["layers"] = [layer.descriptor() for layer in layers]
    assert manifest["mediaType"] == OCI_MANIFEST
    return Image(
        manifest=canonical_json(manifest),
        media_type=OCI_MANIFEST,
        config=image.config,
        layers=layers,
        diff_ids=image.diff_ids,
        platform=image.platform,
    )


def write_combined_archive(
    path: str | os.PathLike[str], image: Image, repo_tags: Sequence[str]
) -> Path:
    """The format Docker 25+ writes: ``manifest.json`` + ``repositories`` beside an OCI layout.

    ``manifest.json`` points at ``blobs/sha256/...`` for the config and layers; index.json
    carries ``io.containerd.image.name`` (the full name) and
    ``org.opencontainers.image.ref.name`` (the tag) for the first of ``repo_tags``.
    """
    first = repo_tags[0]
    annotations = {
        CONTAINERD_NAME_ANNOTATION: f"docker.io/library/{first}" if "/" not in first else first,
        REF_NAME_ANNOTATION: first.rpartition(":")[2],
    }
    entries, index = _layout_entries([(image, annotations)])
    manifest = [
        {
            "Config": f"blobs/sha256/{image.config.hex}",
            "RepoTags": list(repo_tags),
            "Layers": [f"blobs/sha256/{layer.hex}" for layer in image.layers],
        }
    ]
    repo, _, tag = first.rpartition(":")
    entries += [
        Entry("index.json", index),
        Entry("manifest.json", canonical_json(manifest)),
        Entry("repositories", canonical_json({repo: {tag: image.config.hex}})),
    ]
    return write_tar(path, entries)


def layer_digest_of(data: bytes) -> str:
    return sha256_digest(data)
