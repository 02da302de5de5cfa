"""Parse and validate manifests and indexes.

Accepted: Docker image manifest v2 schema 2, Docker manifest list, OCI image
manifest, OCI image index, and OCI artifacts (``artifactType``, ``subject``,
empty configs). Schema 1 is refused. This module only reads the bytes it is
given; whether the referenced blobs exist is the manifest store's business.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, TypeVar

import attrs
import msgspec

from . import mediatypes as mt
from .digest import Digest
from .errors import DigestInvalid, ManifestInvalid, TooLarge
from .jsondoc import check_document

# Sizes are int64 in every client (Go's int64, the spec's "int64"): a larger one is no size.
# Negative sizes are refused with their own message (see _digest_of).
Size = Annotated[int, msgspec.Meta(le=2**63 - 1)]


class Platform(msgspec.Struct, kw_only=True, frozen=True):
    architecture: str
    os: str
    variant: str | None = None
    features: list[str] | None = None
    # msgspec maps the JSON names "os.version"/"os.features" through rename below.
    os_version: str | None = msgspec.field(default=None, name="os.version")
    os_features: list[str] | None = msgspec.field(default=None, name="os.features")


class Descriptor(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    mediaType: str
    digest: str
    size: Size
    urls: list[str] | None = None
    annotations: dict[str, str] | None = None
    artifactType: str | None = None
    platform: Platform | None = None
    data: str | None = None


class _Probe(msgspec.Struct, kw_only=True):
    """Just enough of any manifest to tell which kind it is."""

    schemaVersion: int | None = None
    mediaType: str | None = None
    # An empty Raw means "absent" (msgspec cannot union Raw with None).
    manifests: msgspec.Raw = msgspec.Raw()
    config: msgspec.Raw = msgspec.Raw()
    fsLayers: msgspec.Raw = msgspec.Raw()


class _ImageManifest(msgspec.Struct, kw_only=True):
    schemaVersion: int
    mediaType: str | None = None
    artifactType: str | None = None
    config: Descriptor
    layers: list[Descriptor]
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None


class _Index(msgspec.Struct, kw_only=True):
    schemaVersion: int
    mediaType: str | None = None
    artifactType: str | None = None
    manifests: list[Descriptor]
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None


@attrs.frozen
class ParsedManifest:
    """What the registry needs to know about a validated manifest."""

    media_type: str
    digest: Digest
    size: int
    blobs: tuple[Digest, ...]
    """Config and layers that must be present in the repository."""
    manifests: tuple[Digest, ...]
    """Child manifests of an index."""
    subject: Digest | None
    artifact_type: str | None
    annotations: dict[str, str] | None

    @property
    def is_index(self) -> bool:
        return self.media_type in mt.INDEXES


def detect_media_type(body: bytes) -> str:
    """The media type of stored manifest bytes (for GET, where no header says it)."""
    try:
        probe = msgspec.json.decode(body, type=_Probe)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return mt.OCI_MANIFEST
    if probe.mediaType:
        return probe.mediaType
    if probe.schemaVersion == 1:
        return mt.DOCKER_SCHEMA1_SIGNED
    return mt.OCI_INDEX if bool(probe.manifests) else mt.OCI_MANIFEST


def _digest_of(descriptor: Descriptor, where: str) -> Digest:
    try:
        digest = Digest.parse(descriptor.digest)
    except DigestInvalid as exc:
        raise ManifestInvalid(f"{where}: {exc.message}") from None
    if descriptor.size < 0:
        raise ManifestInvalid(f"{where}: negative size {descriptor.size}")
    if descriptor.data is not None:
        try:
            data = base64.b64decode(descriptor.data, validate=True)
        except ValueError:
            raise ManifestInvalid(f"{where}: 'data' is not valid base64") from None
        if len(data) != descriptor.size or Digest.of(data, digest.algorithm) != digest:
            raise ManifestInvalid(f"{where}: embedded 'data' does not match digest and size")
    return digest


def _content_type_base(content_type: str | None) -> str | None:
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


def parse_manifest(
    body: bytes, content_type: str | None, *, max_size: int = mt.MAX_MANIFEST_SIZE
) -> ParsedManifest:
    """Validate *body* as pushed with *content_type*; raise a spec error when it is not."""
    if len(body) > max_size:
        raise TooLarge(f"manifest is {len(body)} bytes; the limit is {max_size}")
    header_type = _content_type_base(content_type)
    if header_type in mt.SCHEMA1_TYPES:
        raise ManifestInvalid(
            "Docker schema 1 manifests are not supported; push with a current client "
            "(schema 2 or OCI)"
        )
    try:
        check_document(body, unique_keys=True)
    except ValueError as exc:
        raise ManifestInvalid(f"manifest is not acceptable JSON: {exc}") from None
    probe = _decode(body, _Probe, "manifest is not a JSON object")
    if probe.schemaVersion == 1 or bool(probe.fsLayers):
        raise ManifestInvalid(
            "Docker schema 1 manifests are not supported; push with a current client "
            "(schema 2 or OCI)"
        )
    if probe.schemaVersion != 2:
        raise ManifestInvalid(f"unsupported schemaVersion {probe.schemaVersion!r}; expected 2")

    if probe.mediaType is not None:
        media_type = probe.mediaType
        if header_type is not None and header_type != media_type:
            raise ManifestInvalid(
                f"Content-Type {header_type!r} does not match the manifest's mediaType "
                f"{media_type!r}"
            )
    elif header_type is not None:
        media_type = header_type
    else:
        media_type = mt.OCI_INDEX if bool(probe.manifests) else mt.OCI_MANIFEST
    if media_type not in mt.MANIFEST_TYPES:
        raise ManifestInvalid(f"unsupported manifest media type {media_type!r}")
    if media_type in (mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST) and probe.mediaType is None:
        raise ManifestInvalid("Docker manifests must carry their mediaType field")

    digest = Digest.of(body)
    if media_type in mt.INDEXES:
        return _parse_index(body, media_type, digest)
    return _parse_image(body, media_type, digest)


_T = TypeVar("_T")


def _decode(body: bytes, kind: type[_T], what: str) -> _T:
    """Every way decoding can fail, as the one error a client gets for a bad manifest."""
    try:
        return msgspec.json.decode(body, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ManifestInvalid(f"{what}: {exc}") from None
    except RecursionError:
        # check_document bounds the depth first; this guards a future caller that skips it.
        raise ManifestInvalid(f"{what}: nested too deeply") from None


def _subject(doc: _ImageManifest | _Index) -> Digest | None:
    return _digest_of(doc.subject, "subject") if doc.subject is not None else None


def _parse_image(body: bytes, media_type: str, digest: Digest) -> ParsedManifest:
    doc = _decode(body, _ImageManifest, f"invalid {media_type}")
    config_digest = _digest_of(doc.config, "config")  # checks embedded data too
    blobs = [config_digest] if doc.config.data is None else []
    for position, layer in enumerate(doc.layers):
        layer_digest = _digest_of(layer, f"layers[{position}]")
        if not layer.urls and layer.data is None:
            blobs.append(layer_digest)
    # The referrers API reports the config's media type when a manifest sets no artifactType.
    artifact_type = doc.artifactType or doc.config.mediaType
    return ParsedManifest(
        media_type=media_type,
        digest=digest,
        size=len(body),
        blobs=tuple(blobs),
        manifests=(),
        subject=_subject(doc),
        artifact_type=artifact_type,
        annotations=doc.annotations,
    )


def _parse_index(body: bytes, media_type: str, digest: Digest) -> ParsedManifest:
    doc = _decode(body, _Index, f"invalid {media_type}")
    children = tuple(
        _digest_of(child, f"manifests[{position}]") for position, child in enumerate(doc.manifests)
    )
    return ParsedManifest(
        media_type=media_type,
        digest=digest,
        size=len(body),
        blobs=(),
        manifests=children,
        subject=_subject(doc),
        artifact_type=doc.artifactType,
        annotations=doc.annotations,
    )


def descriptor_dict(descriptor: Descriptor) -> dict[str, Any]:
    """A descriptor as plain JSON-ready data."""
    return msgspec.to_builtins(descriptor)


class _References(msgspec.Struct, kw_only=True):
    config: Descriptor | None = None
    layers: list[Descriptor] = []
    manifests: list[Descriptor] = []


def descriptors_of(body: bytes) -> list[Descriptor]:
    """What stored manifest bytes reference: config and layers, or an index's manifests.

    For reporting (sizes, listings); the bytes were validated when they were pushed,
    so anything unreadable yields an empty list rather than an error.
    """
    try:
        doc = msgspec.json.decode(body, type=_References)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return []
    found = [doc.config] if doc.config is not None else []
    return found + doc.layers + doc.manifests
