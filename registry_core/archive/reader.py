"""What an archive holds: its images, their names, configs and layers, read and checked.

Three layouts are read. The classic ``docker save`` format (``manifest.json``
listing ``Config``, ``RepoTags`` and ``Layers`` paths); an OCI image layout
(``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``), as ``skopeo copy
oci-archive:`` writes it; and both in one tar, as Docker 25+ writes it, where
the OCI side is used (it carries the original manifests) and ``manifest.json``
only adds the ``RepoTags``. The result is a list of :class:`Target` plans:
nothing here reads a layer's data or touches storage. Every piece of metadata
is bounded in size, and every error names the entry it is about.
"""

from __future__ import annotations

import re
from typing import Any, Final

import attrs
import msgspec

from ..digest import ALGORITHMS, Digest, Hasher
from ..errors import RegistryError
from ..manifest import parse_manifest
from .compression import IMAGE_CONFIGS, layer_compression
from .errors import ArchiveInvalid
from .references import SourceName, parse_ref_name, parse_reference
from .tarfile_index import ArchiveFile, Member

CONTAINERD_NAME: Final = "io.containerd.image.name"
REF_NAME: Final = "org.opencontainers.image.ref.name"
_HEX_NAME = re.compile(
    r"(?:^|/)(?:blobs/(?P<alg>sha256|sha512)/)?(?P<hex>[a-f0-9]{64,128})(?:\.json)?$"
)
MAX_NESTING: Final = 2


def _invalid(message: str, entry: str) -> ArchiveInvalid:
    return ArchiveInvalid(message, detail={"entry": entry})


# -- plans ------------------------------------------------------------------------------------


@attrs.define
class BlobEntry:
    """A blob the archive holds, and what the archive claims about it."""

    member: Member
    entry: str
    """The name the archive refers to it by (for error messages)."""
    digest: Digest | None = None
    size: int | None = None


@attrs.define
class LayerPlan:
    blob: BlobEntry
    media_type: str | None
    """From the archive's manifest (OCI layout); None for ``docker save`` layers."""
    diff_id: Digest | None
    descriptor: dict[str, Any] | None = None


@attrs.define
class ImagePlan:
    entry: str
    config: bytes
    config_digest: Digest
    config_media_type: str | None
    layers: list[LayerPlan]
    manifest: bytes | None = None
    """The original manifest (OCI layout), stored as-is when its layers allow."""
    manifest_media_type: str | None = None
    platform: str = ""

    @property
    def is_image(self) -> bool:
        """A container image (not an artifact): layers are filesystem tars with diff_ids."""
        return self.config_media_type is None or self.config_media_type in IMAGE_CONFIGS


@attrs.define
class IndexPlan:
    entry: str
    body: bytes
    media_type: str
    digest: Digest
    descriptors: list[dict[str, Any]]
    children: list[ImagePlan | IndexPlan | None]
    """One per descriptor; None when the archive does not hold that manifest."""


@attrs.define
class Target:
    """One top-level image (or index) of the archive, with every name it is given."""

    plan: ImagePlan | IndexPlan
    names: list[SourceName]
    source: str
    """``docker-archive``, ``oci-layout``, or ``docker-archive+oci-layout``."""

    @property
    def entry(self) -> str:
        return self.plan.entry

    def config_digests(self) -> set[Digest]:
        return _config_digests(self.plan)


def _config_digests(plan: ImagePlan | IndexPlan | None) -> set[Digest]:
    if plan is None:
        return set()
    if isinstance(plan, ImagePlan):
        return {plan.config_digest}
    found: set[Digest] = set()
    for child in plan.children:
        found |= _config_digests(child)
    return found


# -- the JSON shapes read -----------------------------------------------------------------------


class _DockerEntry(msgspec.Struct):
    Config: str
    Layers: list[str]
    RepoTags: list[str] | None = None


class _RootFS(msgspec.Struct):
    diff_ids: list[str] = []


class _ImageConfig(msgspec.Struct):
    architecture: str = ""
    os: str = ""
    variant: str | None = None
    rootfs: _RootFS | None = None


class _Descriptor(msgspec.Struct):
    mediaType: str
    digest: str
    size: int
    annotations: dict[str, str] | None = None
    urls: list[str] | None = None


class _Layout(msgspec.Struct):
    imageLayoutVersion: str


class _Index(msgspec.Struct):
    manifests: list[_Descriptor]


class _Manifest(msgspec.Struct):
    config: _Descriptor
    layers: list[_Descriptor]


def _decode(data: bytes, kind: Any, entry: str, what: str) -> Any:
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.DecodeError as exc:
        raise _invalid(f"{entry}: {what} is not valid JSON ({exc})", entry) from None
    except msgspec.ValidationError as exc:
        raise _invalid(f"{entry}: {what} does not have the expected shape ({exc})", entry) from None


# -- reading ------------------------------------------------------------------------------------


class ArchiveReader:
    """Reads the plans out of one indexed archive (blocking: run in a worker thread)."""

    def __init__(self, archive: ArchiveFile, *, max_metadata_size: int) -> None:
        self.archive = archive
        self.max_metadata_size = max_metadata_size

    def targets(self) -> list[Target]:
        has_oci = self.archive.has("index.json") or self.archive.has("oci-layout")
        has_docker = self.archive.has("manifest.json")
        if not has_oci and not has_docker:
            raise ArchiveInvalid(
                "the archive has neither manifest.json (docker save) nor index.json "
                "(OCI image layout)",
                detail={"entry": "manifest.json"},
            )
        targets: list[Target] = []
        if has_oci:
            targets = self._oci_targets()
        if has_docker:
            docker_targets = self._docker_targets()
            if targets:
                self._merge_names(targets, docker_targets)
            else:
                targets = docker_targets
        if not targets:
            raise ArchiveInvalid("the archive holds no image", detail={"entry": "index.json"})
        return targets

    def _metadata(self, name: str, what: str) -> bytes:
        member = self.archive.resolve(name, what)
        return self.archive.read(member, self.max_metadata_size, what)

    # -- docker save ------------------------------------------------------------------------

    def _docker_targets(self) -> list[Target]:
        body = self._metadata("manifest.json", "manifest.json")
        entries = _decode(body, list[_DockerEntry], "manifest.json", "manifest.json")
        by_config: dict[Digest, Target] = {}
        for position, item in enumerate(entries):
            entry = f"manifest.json[{position}]"
            plan = self._docker_image(item, entry)
            names = [parse_reference(tag) for tag in item.RepoTags or []]
            existing = by_config.get(plan.config_digest)
            if existing is not None:
                existing.names.extend(n for n in names if n not in existing.names)
            else:
                by_config[plan.config_digest] = Target(plan, names, "docker-archive")
        return list(by_config.values())

    def _docker_image(self, item: _DockerEntry, entry: str) -> ImagePlan:
        config_blob = self._blob_by_path(item.Config, f"{entry} Config")
        config = self._read_blob(config_blob, "config")
        config_doc = _decode(config, _ImageConfig, config_blob.entry, "the image config")
        diff_ids = self._diff_ids(config_doc, config_blob.entry)
        if len(diff_ids) != len(item.Layers):
            raise _invalid(
                f"{entry}: the config {item.Config!r} lists {len(diff_ids)} diff_ids for "
                f"{len(item.Layers)} layers",
                item.Config,
            )
        layers = [
            LayerPlan(self._blob_by_path(path, f"{entry} layer"), None, diff_id)
            for path, diff_id in zip(item.Layers, diff_ids, strict=True)
        ]
        return ImagePlan(
            entry=entry,
            config=config,
            config_digest=Digest.of(config),
            config_media_type=None,
            layers=layers,
            platform=_platform(config_doc),
        )

    def _blob_by_path(self, path: str, what: str) -> BlobEntry:
        member = self.archive.resolve(path, what)
        claim = None
        found = _HEX_NAME.search(path)
        if found and (found["alg"] or len(found["hex"]) == 64):
            algorithm = found["alg"] or "sha256"
            if len(found["hex"]) == ALGORITHMS[algorithm]:
                claim = Digest(algorithm, found["hex"])
        # "<id>/layer.tar" and "<hex>.tar" name layers by ids, not content: no claim for those.
        if path.endswith(".tar"):
            claim = None
        return BlobEntry(member, path, claim)

    def _read_blob(self, blob: BlobEntry, what: str) -> bytes:
        """A small blob (config, manifest), checked against its claimed digest and size."""
        data = self.archive.read(blob.member, self.max_metadata_size, what)
        if blob.size is not None and blob.size != len(data):
            raise _invalid(
                f"{what} {blob.entry!r} is {len(data)} bytes; the archive says {blob.size}",
                blob.entry,
            )
        if blob.digest is not None:
            actual = _digest(data, blob.digest.algorithm)
            if actual != blob.digest:
                raise _invalid(
                    f"{what} digest mismatch: {blob.entry!r} hashes to {actual}, the archive "
                    f"says {blob.digest}",
                    blob.entry,
                )
        return data

    def _diff_ids(self, config: _ImageConfig, entry: str) -> list[Digest]:
        raw = config.rootfs.diff_ids if config.rootfs is not None else []
        diff_ids = []
        for position, text in enumerate(raw):
            try:
                diff_ids.append(Digest.parse(text))
            except RegistryError:
                raise _invalid(
                    f"{entry}: rootfs.diff_ids[{position}] is not a digest ({text[:80]!r})", entry
                ) from None
        return diff_ids

    # -- OCI image layout -------------------------------------------------------------------

    def _oci_targets(self) -> list[Target]:
        if self.archive.has("oci-layout"):
            layout = _decode(
                self._metadata("oci-layout", "oci-layout"), _Layout, "oci-layout", "oci-layout"
            )
            if not layout.imageLayoutVersion.startswith("1."):
                raise _invalid(
                    f"oci-layout: unsupported imageLayoutVersion {layout.imageLayoutVersion!r}",
                    "oci-layout",
                )
        body = self._metadata("index.json", "index.json")
        index = _decode(body, _Index, "index.json", "index.json")
        source = "docker-archive+oci-layout" if self.archive.has("manifest.json") else "oci-layout"
        by_digest: dict[str, Target] = {}
        for position, descriptor in enumerate(index.manifests):
            entry = f"index.json manifests[{position}]"
            names = _annotation_names(descriptor.annotations or {})
            existing = by_digest.get(descriptor.digest)
            if existing is not None:
                existing.names.extend(n for n in names if n not in existing.names)
                continue
            plan = self._load(descriptor, entry, depth=0)
            if plan is None:
                raise _invalid(
                    f"{entry}: manifest {descriptor.digest} is missing from the archive", entry
                )
            by_digest[descriptor.digest] = Target(plan, names, source)
        return list(by_digest.values())

    def _load(
        self, descriptor: _Descriptor, entry: str, depth: int
    ) -> ImagePlan | IndexPlan | None:
        digest = _parse_digest(descriptor.digest, entry)
        path = f"blobs/{digest.algorithm}/{digest.hex}"
        if not self.archive.has(path):
            return None
        blob = BlobEntry(self.archive.resolve(path, "manifest"), path, digest, descriptor.size)
        body = self._read_blob(blob, "manifest")
        try:
            parsed = parse_manifest(body, descriptor.mediaType, max_size=self.max_metadata_size)
        except RegistryError as exc:
            raise _invalid(f"{entry} ({path}): {exc.message}", path) from None
        if parsed.is_index:
            if depth >= MAX_NESTING:
                raise _invalid(f"{entry}: indexes nested deeper than {MAX_NESTING}", path)
            index = _decode(body, _Index, path, "the index")
            children = [
                self._load(child, f"{entry} > manifests[{i}]", depth + 1)
                for i, child in enumerate(index.manifests)
            ]
            raw = msgspec.json.decode(body)
            return IndexPlan(
                entry=entry,
                body=body,
                media_type=parsed.media_type,
                digest=parsed.digest,
                descriptors=list(raw.get("manifests", [])),
                children=children,
            )
        return self._oci_image(body, parsed.media_type, entry, path)

    def _oci_image(self, body: bytes, media_type: str, entry: str, path: str) -> ImagePlan:
        doc = _decode(body, _Manifest, path, "the manifest")
        raw = msgspec.json.decode(body)
        config_digest = _parse_digest(doc.config.digest, f"{entry} config")
        config_path = f"blobs/{config_digest.algorithm}/{config_digest.hex}"
        config_blob = BlobEntry(
            self.archive.resolve(config_path, f"{entry} config"),
            config_path,
            config_digest,
            doc.config.size,
        )
        config = self._read_blob(config_blob, "config")
        is_image = doc.config.mediaType in IMAGE_CONFIGS
        platform = ""
        diff_ids: list[Digest] = []
        if is_image:
            config_doc = _decode(config, _ImageConfig, config_path, "the image config")
            diff_ids = self._diff_ids(config_doc, config_path)
            platform = _platform(config_doc)
            tar_layers = [d for d in doc.layers if layer_compression(d.mediaType) is not None]
            if len(diff_ids) != len(tar_layers):
                raise _invalid(
                    f"{entry}: the config {config_path!r} lists {len(diff_ids)} diff_ids for "
                    f"{len(tar_layers)} layers",
                    config_path,
                )
        layers = []
        remaining = iter(diff_ids)
        for position, layer in enumerate(doc.layers):
            what = f"{entry} layers[{position}]"
            layer_digest = _parse_digest(layer.digest, what)
            is_tar = is_image and layer_compression(layer.mediaType) is not None
            diff_id = next(remaining) if is_tar else None
            if layer.urls:
                continue  # foreign layers live elsewhere; the manifest keeps their URLs
            layer_path = f"blobs/{layer_digest.algorithm}/{layer_digest.hex}"
            member = self.archive.resolve(layer_path, f"{what} blob")
            layers.append(
                LayerPlan(
                    BlobEntry(member, layer_path, layer_digest, layer.size),
                    layer.mediaType,
                    diff_id,
                    descriptor=raw["layers"][position],
                )
            )
        return ImagePlan(
            entry=entry,
            config=config,
            config_digest=config_digest,
            config_media_type=doc.config.mediaType,
            layers=layers,
            manifest=body,
            manifest_media_type=media_type,
            platform=platform,
        )

    # -- both in one tar (Docker 25+) -----------------------------------------------------------

    def _merge_names(self, targets: list[Target], docker_targets: list[Target]) -> None:
        """Add manifest.json's RepoTags to the OCI targets with the same config."""
        for docker in docker_targets:
            wanted = docker.config_digests()
            matches = [t for t in targets if t.config_digests() & wanted]
            if not matches:
                targets.append(docker)
                continue
            for target in matches:
                target.names.extend(n for n in docker.names if n not in target.names)


def _annotation_names(annotations: dict[str, str]) -> list[SourceName]:
    names = []
    if CONTAINERD_NAME in annotations:
        names.append(parse_reference(annotations[CONTAINERD_NAME]))
    if REF_NAME in annotations:
        ref = parse_ref_name(annotations[REF_NAME])
        if ref not in names:
            names.append(ref)
    return names


def _platform(config: _ImageConfig) -> str:
    parts = [config.os, config.architecture] + ([config.variant] if config.variant else [])
    return "/".join(p for p in parts if p)


def _parse_digest(text: str, entry: str) -> Digest:
    try:
        return Digest.parse(text)
    except RegistryError as exc:
        raise _invalid(f"{entry}: {exc.message}", entry) from None


def _digest(data: bytes, algorithm: str) -> Digest:
    hasher = Hasher(algorithm)
    hasher.update(data)
    return hasher.digest()


__all__ = [
    "ArchiveReader",
    "BlobEntry",
    "ImagePlan",
    "IndexPlan",
    "LayerPlan",
    "Target",
]
