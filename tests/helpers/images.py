"""Build test images offline, in pure Python (tarfile, gzip, json, hashlib).

Everything is deterministic for a given input (tar mtime 0, gzip mtime 0, compact JSON),
and every builder returns the exact bytes and digests it wrote, so tests can compare
what a client reports, or what a registry serves, end to end.

- :func:`make_layer` -> ``(gzip_bytes, diff_id)``
- :func:`build_image` / :func:`build_index` -> :class:`Image` / :class:`Index` (in memory)
- :func:`sample_image` / :func:`sample_multiarch` -> ready-made distinct content
- :func:`write_oci_layout` -> an OCI image layout directory (``oci:DIR:TAG``)
- :func:`write_docker_archive` -> a classic ``docker save`` tarball (``docker-archive:PATH``)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import secrets
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_LAYER",
    "DOCKER_LAYER_GZIP",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER_GZIP",
    "OCI_MANIFEST",
    "REF_NAME_ANNOTATION",
    "Blob",
    "DockerArchive",
    "Image",
    "Index",
    "build_image",
    "build_index",
    "canonical_json",
    "make_layer",
    "make_layer_tar",
    "make_random_layer",
    "sample_image",
    "sample_multiarch",
    "sha256_digest",
    "write_docker_archive",
    "write_oci_layout",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

_EPOCH = "1970-01-01T00:00:00Z"
_VARIANTS = {"arm64": "v8"}


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """Compact, key-sorted JSON: the exact bytes the builders hash and write."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


# --- layers --------------------------------------------------------------------------------


def make_layer_tar(files: Mapping[str, bytes | str]) -> bytes:
    """An uncompressed, deterministic layer tar of ``{path: content}``.

    Parent directories get their own entries (mode 0755); files are 0644, owned by
    0:0, mtime 0, in sorted order. A path ending in ``/`` makes an empty directory.
    """
    entries: dict[str, bytes | None] = {}
    for raw_path, content in files.items():
        path = raw_path.strip("/")
        if not path:
            raise ValueError(f"bad layer path {raw_path!r}")
        parts = path.split("/")
        for i in range(1, len(parts)):
            entries.setdefault("/".join(parts[:i]), None)
        if raw_path.endswith("/"):
            entries.setdefault(path, None)
        else:
            entries[path] = content.encode() if isinstance(content, str) else bytes(content)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(entries):
            data = entries[path]
            info = tarfile.TarInfo(path)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.mode = 0o644
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def make_layer(files: Mapping[str, bytes | str]) -> tuple[bytes, str]:
    """A gzip'ed layer of ``{path: content}``: returns ``(compressed_bytes, diff_id)``.

    ``diff_id`` is the sha256 digest of the uncompressed tar; the blob digest is
    ``sha256_digest(compressed_bytes)``.
    """
    tar = make_layer_tar(files)
    return _gzip(tar), sha256_digest(tar)


def make_random_layer(size: int, seed: int | str | None = None) -> tuple[bytes, str]:
    """A layer holding one file of ``size`` incompressible (seeded random) bytes."""
    rng = random.Random(seed if seed is not None else secrets.token_hex(8))
    return make_layer({"data/random.bin": rng.randbytes(size)})


# --- manifests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    """Bytes with their media type; ``digest``/``size`` are derived from ``data``."""

    media_type: str
    data: bytes = field(repr=False)

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class Image:
    """One image manifest, its config and its (compressed) layers."""

    manifest: bytes = field(repr=False)
    media_type: str
    config: Blob
    layers: tuple[Blob, ...]
    diff_ids: tuple[str, ...]
    platform: dict[str, str]

    @property
    def digest(self) -> str:
        """The manifest digest."""
        return sha256_digest(self.manifest)

    @property
    def size(self) -> int:
        return len(self.manifest)

    @property
    def config_digest(self) -> str:
        return self.config.digest

    @property
    def layer_digests(self) -> list[str]:
        return [layer.digest for layer in self.layers]

    @property
    def architecture(self) -> str:
        return self.platform["architecture"]

    @property
    def os(self) -> str:
        return self.platform["os"]

    def manifest_json(self) -> dict[str, Any]:
        return json.loads(self.manifest)

    def config_json(self) -> dict[str, Any]:
        return json.loads(self.config.data)

    def blobs(self) -> list[Blob]:
        """Config and layers (everything to upload before the manifest)."""
        return [self.config, *self.layers]

    def descriptor(self, with_platform: bool = False, **extra: Any) -> dict[str, Any]:
        desc: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if with_platform:
            desc["platform"] = dict(self.platform)
        desc.update(extra)
        return desc


@dataclass(frozen=True)
class Index:
    """An image index (OCI) or manifest list (Docker) over several :class:`Image`."""

    manifest: bytes = field(repr=False)
    media_type: str
    images: tuple[Image, ...]

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def size(self) -> int:
        return len(self.manifest)

    def manifest_json(self) -> dict[str, Any]:
        return json.loads(self.manifest)

    def blobs(self) -> list[Blob]:
        """Every config and layer of every child image (deduplicated, in order)."""
        seen: dict[str, Blob] = {}
        for image in self.images:
            for blob in image.blobs():
                seen.setdefault(blob.digest, blob)
        return list(seen.values())

    def by_platform(self, architecture: str, os: str = "linux") -> Image:
        for image in self.images:
            if image.architecture == architecture and image.os == os:
                return image
        raise KeyError(f"no {os}/{architecture} image in index")

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


LayerSpec = Mapping[str, bytes | str] | tuple[bytes, str]


def _as_layer(spec: LayerSpec) -> tuple[bytes, str]:
    if isinstance(spec, tuple):
        compressed, diff_id = spec
        return bytes(compressed), diff_id
    return make_layer(spec)


def build_image(
    layers: Sequence[LayerSpec],
    *,
    architecture: str = "amd64",
    os: str = "linux",
    variant: str | None = None,
    fmt: str = "oci",
    config_extra: Mapping[str, Any] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Image:
    """An image from layers given as ``{path: content}`` dicts or ``make_layer`` tuples.

    ``fmt="oci"`` (OCI manifest/config/layer media types) or ``"docker"`` (schema 2).
    The config's ``architecture``/``os`` (and ``variant``: ``v8`` by default for arm64)
    match ``platform``; ``rootfs.diff_ids`` matches the layers. ``config_extra`` is
    merged into the config's top level (e.g. ``{"config": {"Labels": {...}}}``).
    """
    if fmt not in ("oci", "docker"):
        raise ValueError(f"fmt must be 'oci' or 'docker', not {fmt!r}")
    built = [_as_layer(spec) for spec in layers]
    layer_type = OCI_LAYER_GZIP if fmt == "oci" else DOCKER_LAYER_GZIP
    layer_blobs = tuple(Blob(layer_type, data) for data, _ in built)
    diff_ids = tuple(diff_id for _, diff_id in built)
    if variant is None:
        variant = _VARIANTS.get(architecture)
    platform = {"architecture": architecture, "os": os}
    if variant:
        platform["variant"] = variant
    config_obj: dict[str, Any] = {
        "architecture": architecture,
        "os": os,
        "created": _EPOCH,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
        },
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [
            {"created": _EPOCH, "created_by": f"cargohold tests: layer {i}"}
            for i in range(len(diff_ids))
        ],
    }
    if variant:
        config_obj["variant"] = variant
    config_obj.update(config_extra or {})
    config = Blob(OCI_CONFIG if fmt == "oci" else DOCKER_CONFIG, canonical_json(config_obj))
    media_type = OCI_MANIFEST if fmt == "oci" else DOCKER_MANIFEST
    manifest_obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.descriptor(),
        "layers": [blob.descriptor() for blob in layer_blobs],
    }
    if annotations:
        if fmt != "oci":
            raise ValueError("annotations need fmt='oci'")
        manifest_obj["annotations"] = dict(annotations)
    return Image(
        manifest=canonical_json(manifest_obj),
        media_type=media_type,
        config=config,
        layers=layer_blobs,
        diff_ids=diff_ids,
        platform=platform,
    )


def build_index(
    images: Iterable[Image],
    *,
    fmt: str = "oci",
    annotations: Mapping[str, str] | None = None,
) -> Index:
    """An OCI image index (``fmt="oci"``) or Docker manifest list (``"docker"``)."""
    images = tuple(images)
    if fmt not in ("oci", "docker"):
        raise ValueError(f"fmt must be 'oci' or 'docker', not {fmt!r}")
    media_type = OCI_INDEX if fmt == "oci" else DOCKER_MANIFEST_LIST
    obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [image.descriptor(with_platform=True) for image in images],
    }
    if annotations:
        if fmt != "oci":
            raise ValueError("annotations need fmt='oci'")
        obj["annotations"] = dict(annotations)
    return Index(manifest=canonical_json(obj), media_type=media_type, images=images)


def sample_image(
    name: str = "app",
    *,
    architecture: str = "amd64",
    os: str = "linux",
    layers: int = 2,
    fmt: str = "oci",
    seed: str | None = None,
) -> Image:
    """A small image whose content is unique to ``(name, architecture, seed)``.

    ``seed=None`` picks a random seed, so blobs never collide with other tests' blobs.
    """
    seed = seed if seed is not None else secrets.token_hex(8)
    specs = [
        {
            f"etc/cargohold/{name}-{i}.txt": f"{name} {os}/{architecture} layer {i} {seed}\n",
            f"usr/share/{name}/{i}/README": f"layer {i} of {name} ({seed})\n" * (i + 1),
        }
        for i in range(layers)
    ]
    return build_image(specs, architecture=architecture, os=os, fmt=fmt)


def sample_multiarch(
    name: str = "app",
    *,
    architectures: Sequence[str] = ("amd64", "arm64"),
    layers: int = 2,
    fmt: str = "oci",
    seed: str | None = None,
) -> Index:
    """An index of distinct linux images, one per architecture (default amd64 + arm64)."""
    seed = seed if seed is not None else secrets.token_hex(8)
    images = [
        sample_image(name, architecture=arch, layers=layers, fmt=fmt, seed=seed)
        for arch in architectures
    ]
    return build_index(images, fmt=fmt)


# --- OCI image layout ----------------------------------------------------------------------


def _write_blob(root: Path, data: bytes) -> None:
    digest = sha256_digest(data)
    path = root / "blobs" / "sha256" / digest.split(":", 1)[1]
    if not path.exists():
        path.write_bytes(data)


def write_oci_layout(
    path: str | os.PathLike[str],
    images: Image | Index | Sequence[Image],
    tag: str = "latest",
) -> Image | Index:
    """Write (or add to) an OCI image layout at ``path``, tagged ``tag``.

    ``images`` is an :class:`Image`, an :class:`Index`, or a list of images (one image
    is written as is; several become an OCI index). ``index.json`` gets a descriptor
    with the ``org.opencontainers.image.ref.name`` annotation, replacing an earlier
    entry of the same tag, so one layout can hold several tags. Returns the tagged
    object: ``result.digest`` is what ``skopeo inspect --raw oci:PATH:TAG`` hashes to.
    """
    if isinstance(images, Image | Index):
        top: Image | Index = images
    else:
        images = list(images)
        top = images[0] if len(images) == 1 else build_index(images)
    if top.media_type not in (OCI_MANIFEST, OCI_INDEX):
        raise ValueError(
            f"an OCI layout needs OCI media types (build with fmt='oci'), not {top.media_type}"
        )
    root = Path(path)
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    for blob in top.blobs():
        _write_blob(root, blob.data)
    if isinstance(top, Index):
        for image in top.images:
            _write_blob(root, image.manifest)
    _write_blob(root, top.manifest)

    index_path = root / "index.json"
    if index_path.exists():
        index = json.loads(index_path.read_bytes())
    else:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    index["manifests"] = [
        d
        for d in index.get("manifests", [])
        if d.get("annotations", {}).get(REF_NAME_ANNOTATION) != tag
    ]
    index["manifests"].append(top.descriptor(annotations={REF_NAME_ANNOTATION: tag}))
    index_path.write_bytes(canonical_json(index))
    return top


# --- docker save archive -------------------------------------------------------------------


@dataclass(frozen=True)
class DockerArchive:
    """What :func:`write_docker_archive` wrote.

    Layers in the archive are uncompressed, so ``diff_ids`` are also the layer digests
    skopeo reports for ``docker-archive:PATH``. A registry receives layers compressed by
    the client, so their digests (and the manifest digest) are up to the client; the
    config is copied verbatim (``config_digest`` holds end to end, as do ``diff_ids``).
    """

    path: Path
    repo_tag: str
    config: bytes = field(repr=False)
    layer_tars: tuple[bytes, ...] = field(repr=False)
    diff_ids: tuple[str, ...]
    architecture: str
    os: str

    @property
    def config_digest(self) -> str:
        return sha256_digest(self.config)

    @property
    def image_id(self) -> str:
        """Docker's image id: the config digest."""
        return self.config_digest

    def config_json(self) -> dict[str, Any]:
        return json.loads(self.config)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes | None) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if data is None:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
    else:
        info.mode = 0o644
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def write_docker_archive(
    path: str | os.PathLike[str],
    repo_tag: str,
    layers: Sequence[Mapping[str, bytes | str] | bytes],
    *,
    architecture: str = "amd64",
    os: str = "linux",
) -> DockerArchive:
    """Write a classic ``docker save`` tarball with one image tagged ``repo_tag``.

    ``layers`` are ``{path: content}`` dicts or ready uncompressed tar bytes. The archive
    holds ``manifest.json`` (Config/RepoTags/Layers), ``<config-hex>.json``,
    ``<layer-id>/{VERSION,json,layer.tar}`` and ``repositories``, which
    ``skopeo copy docker-archive:PATH docker://...`` (and ``docker load``) accept.
    """
    tars = tuple(
        bytes(layer) if isinstance(layer, bytes | bytearray) else make_layer_tar(layer)
        for layer in layers
    )
    diff_ids = tuple(sha256_digest(t) for t in tars)
    config_obj = {
        "architecture": architecture,
        "os": os,
        "created": _EPOCH,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
        },
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [
            {"created": _EPOCH, "created_by": f"cargohold tests: layer {i}"}
            for i in range(len(tars))
        ],
    }
    config = canonical_json(config_obj)
    config_hex = hashlib.sha256(config).hexdigest()

    # Legacy v1 layer ids: a chain over the diff ids (any stable hex works).
    layer_ids: list[str] = []
    parent = ""
    for diff_id in diff_ids:
        layer_id = hashlib.sha256(f"{parent}\n{diff_id}".encode()).hexdigest()
        layer_ids.append(layer_id)
        parent = layer_id

    repo, _, tag = repo_tag.rpartition(":")
    if not repo or "/" in tag:
        repo, tag = repo_tag, "latest"
    manifest = [
        {
            "Config": f"{config_hex}.json",
            "RepoTags": [f"{repo}:{tag}"],
            "Layers": [f"{layer_id}/layer.tar" for layer_id in layer_ids],
        }
    ]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        previous = None
        for layer_id, layer_tar in zip(layer_ids, tars, strict=True):
            v1: dict[str, Any] = {
                "id": layer_id,
                "created": _EPOCH,
                "container_config": {"Cmd": None},
                "os": os,
            }
            if previous:
                v1["parent"] = previous
            _add_member(tar, f"{layer_id}/", None)
            _add_member(tar, f"{layer_id}/VERSION", b"1.0")
            _add_member(tar, f"{layer_id}/json", canonical_json(v1))
            _add_member(tar, f"{layer_id}/layer.tar", layer_tar)
            previous = layer_id
        _add_member(tar, f"{config_hex}.json", config)
        _add_member(tar, "manifest.json", canonical_json(manifest))
        if layer_ids:
            _add_member(tar, "repositories", canonical_json({repo: {tag: layer_ids[-1]}}))
    return DockerArchive(
        path=out,
        repo_tag=f"{repo}:{tag}",
        config=config,
        layer_tars=tars,
        diff_ids=diff_ids,
        architecture=architecture,
        os=os,
    )
