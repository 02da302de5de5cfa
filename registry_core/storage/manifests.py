"""Manifests, tags and referrers of one repository.

Manifest bytes are stored once in the blob store (as Distribution does) and
linked as revisions of a repository; a tag is a ``current/link`` to one
revision, plus an ``index`` of the revisions it has pointed at. A tag is
written only after the manifest it names is stored and linked, so no tag ever
points at missing content. The referrers index is one small descriptor object
per (subject, referrer) pair, written when a manifest with a ``subject`` is
pushed: listing referrers never parses every manifest in the repository.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import msgspec

from ..attachments import is_attachment_tag
from ..digest import Digest
from ..errors import Denied, DigestInvalid, ManifestBlobUnknown, ManifestUnknown
from ..manifest import ParsedManifest, detect_media_type, parse_manifest
from ..mediatypes import MAX_MANIFEST_SIZE
from ..names import RepositoryName, validate_tag
from . import layout, steps
from .blobs import BlobStore, RepositoryBlobs
from .cache import ContentCache, LinkCache
from .driver import PathNotFound, StorageDriver
from .policy import RepositoryPolicy, WritePolicy
from .removed_revisions import removal_mark, tags_written_since
from .repo_index import RepositoryIndex
from .steps import Step, run_steps
from .tag_index import TagIndex, total_size

log = logging.getLogger(__name__)


@attrs.frozen
class StoredManifest:
    digest: Digest
    media_type: str
    body: bytes

    @property
    def size(self) -> int:
        return len(self.body)


class _ReferrerRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    mediaType: str
    digest: str
    size: int
    artifactType: str | None = None
    annotations: dict[str, str] | None = None


class ManifestStore:
    """Manifests and tags of one repository."""

    def __init__(
        self,
        driver: StorageDriver,
        store: BlobStore,
        blobs: RepositoryBlobs,
        name: RepositoryName,
        cache: ContentCache,
        links: LinkCache | None = None,
        *,
        strict_index: bool = False,
        max_size: int = MAX_MANIFEST_SIZE,
        policy: WritePolicy | None = None,
        on_stored: Callable[[str, Digest, str, str | None], None] | None = None,
        repo_index: RepositoryIndex | None = None,
    ) -> None:
        self.driver = driver
        self.store = store
        self.blobs = blobs
        self.name = name
        self.cache = cache
        self.links = links or LinkCache(0)
        self._key = name.value
        self.strict_index = strict_index
        self.max_size = max_size
        self.policy = policy
        self.tag_index = TagIndex(driver, name)
        # The manifest feed's nudge (registry_core.manifest_feed): in-process, no storage write.
        self.on_stored = on_stored
        # The registry's repository index (website listings): told of a repository's first
        # manifest and of its last one's deletion; free once this process knows the name.
        self.repo_index = repo_index

    # -- reading ------------------------------------------------------------------

    async def resolve(self, reference: str) -> Digest:
        """The digest a tag or digest reference names in this repository."""
        cached = self.links.get(self._key, reference)
        if cached is not None:
            return cached
        if ":" in reference:
            digest = Digest.parse(reference)
            if not await self.has_revision(digest) and not await self._relink_removed(digest):
                raise ManifestUnknown(detail={"reference": reference})
        else:
            tag = validate_tag(reference)
            try:
                link = await self.driver.read(layout.tag_current_link(self.name, tag))
            except PathNotFound:
                raise ManifestUnknown(detail={"tag": tag}) from None
            digest = Digest.parse(link.decode().strip())
        self.links.put(self._key, reference, digest)
        return digest

    async def _relink_removed(self, digest: Digest) -> bool:
        """Link *digest* back if a running GC removed it and a tag written since that run's
        mark names it (``removed_revisions``); True if it is linked now."""
        since = await removal_mark(self.driver, self.name, digest)
        if since is None:
            return False
        tags = await tags_written_since(self.driver, self.name, since)
        if not tags or not await self.tags_pointing_at(digest, among=tags):
            return False
        await self.driver.write(layout.revision_link(self.name, digest), str(digest).encode())
        log.info("%s@%s linked back: a GC run removed it, a tag names it", self.name.value, digest)
        return True

    async def has_revision(self, digest: Digest) -> bool:
        """Is *digest* linked in this repository now (storage, not the link cache)?"""
        try:
            await self.driver.stat(layout.revision_link(self.name, digest))
        except PathNotFound:
            return False
        return True

    async def get(self, reference: str) -> StoredManifest:
        digest = await self.resolve(reference)
        return await self.get_by_digest(digest)

    async def get_by_digest(self, digest: Digest) -> StoredManifest:
        """A revision's content; the caller has checked it belongs to this repository."""
        cached = self.cache.get(digest)
        if cached is None:
            body = await self._read_body(digest)
            cached = self.cache.put(digest, body, detect_media_type(body))
        body, media_type = cached
        return StoredManifest(digest, media_type, body)

    async def _read_body(self, digest: Digest) -> bytes:
        """A linked revision's bytes, moved back first if a running GC set them aside
        after the revision was written (``BlobStore.recover_set_aside``)."""
        try:
            return await self.driver.read(layout.blob_data(digest))
        except PathNotFound:
            if not await self.store.recover_set_aside(digest):
                raise ManifestUnknown(detail={"digest": str(digest)}) from None
        try:
            return await self.driver.read(layout.blob_data(digest))
        except PathNotFound:
            raise ManifestUnknown(detail={"digest": str(digest)}) from None

    # -- writing ------------------------------------------------------------------

    async def put(
        self,
        body: bytes,
        content_type: str | None,
        tag: str | None = None,
        *,
        check_references: bool = True,
    ) -> ParsedManifest:
        """Validate, store and link a manifest, then point *tag* at it.

        ``check_references=False`` is for the pull-through cache only: its blobs
        are fetched from the upstream when first asked for, as Distribution's proxy does.
        """
        if tag is not None:
            validate_tag(tag)
        if len(body) > _PARSE_INLINE_BYTES:
            # Checking a large body (depth, duplicate keys, every descriptor) takes long
            # enough to stall every other request of this process.
            parsed = await asyncio.to_thread(
                parse_manifest, body, content_type, max_size=self.max_size
            )
        else:
            parsed = parse_manifest(body, content_type, max_size=self.max_size)
        if check_references:
            await self._check_references(parsed)
        rules, current = await self._check_tag(tag, parsed.digest)
        digest = parsed.digest
        # Content and revision link together (a revision whose content is missing
        # reads as unknown, so a crash between them exposes nothing); tags only after.
        stored = [
            steps.write_if_absent(layout.blob_data(digest), body),
            steps.write(layout.revision_link(self.name, digest), str(digest).encode()),
        ]
        # Checked again once the revision is visible (the next group of the same call:
        # storage.steps runs it only after the writes above finished): online GC sets
        # unreferenced blobs aside and only then re-reads the repositories
        # (lifecycle/gc.py), so either this check sees a blob set aside, or GC's re-read
        # sees this revision and keeps (and re-links) what it references: no tag can
        # name missing content, however long this request took. The manifest's own
        # bytes are such a blob too: stored again if they were set aside. A stat answers
        # that as well as a create-if-absent and costs no file: the bytes are written
        # again only when they are gone. The tag's index pointer is read in the same
        # call (the index entry it names is replaced below). The pull-through cache
        # (no *check_references*) fetches the blobs when first asked for.
        recheck = self._reference_steps(parsed) if check_references else []
        pointer = (
            self.tag_index.pointer_step(tag)
            if tag is not None and not is_attachment_tag(tag)
            else None
        )
        after = [*recheck, steps.stat(layout.blob_data(digest))]
        if pointer is not None:
            after.append(pointer)
        try:
            _, outcomes = await run_steps(self.driver, [stored, after])
            if check_references:
                await self._judge_references(parsed, outcomes)
            if isinstance(outcomes[len(recheck)], PathNotFound):
                await self.store.put_small(body, digest)
        except ManifestBlobUnknown:
            with contextlib.suppress(PathNotFound):
                await self.driver.delete(layout.revision_dir(self.name, parsed.digest))
            raise
        previous = self.tag_index.pointer_from(outcomes[-1]) if pointer is not None else None
        if self.repo_index is not None:  # the revision is visible: the index may look
            await self.repo_index.written(self.name)
        self.cache.put(parsed.digest, body, parsed.media_type)
        self.links.generation += 1
        if parsed.subject is not None:
            record = _ReferrerRecord(
                mediaType=parsed.media_type,
                digest=str(parsed.digest),
                size=parsed.size,
                artifactType=parsed.artifact_type,
                annotations=parsed.annotations,
            )
            await self.driver.write(
                layout.referrer_entry(self.name, parsed.subject, parsed.digest),
                msgspec.json.encode(record),
            )
        if tag is not None:
            await self._write_tag(
                tag,
                parsed.digest,
                lambda linked: self._keep_tagged(
                    tag, parsed, body, check_references, linked=linked
                ),
                previous,
                confirm_in_call=True,
            )
            if rules is not None:
                await rules.tag_changed(tag, current, parsed.digest)
        if self.on_stored is not None and parsed.subject is None:
            self.on_stored(self._key, parsed.digest, parsed.media_type, tag)
        return parsed

    async def _check_references(self, parsed: ParsedManifest, *, children: bool = False) -> None:
        """Every blob linked here and, with *children* or ``strict_index``, every child of
        an index a revision here (all read in one storage call)."""
        wanted = self._reference_steps(parsed, children=children)
        if wanted:
            (outcomes,) = await run_steps(self.driver, [wanted])
            await self._judge_references(parsed, outcomes, children=children)

    def _reference_steps(self, parsed: ParsedManifest, *, children: bool = False) -> list[Step]:
        """What :meth:`_check_references` reads; :meth:`_judge_references` answers."""
        wanted = [step for d in dict.fromkeys(parsed.blobs) for step in self.blobs.exists_steps(d)]
        if (children or self.strict_index) and parsed.manifests:
            wanted += [
                steps.stat(layout.revision_link(self.name, d))
                for d in dict.fromkeys(parsed.manifests)
            ]
        return wanted

    async def _judge_references(
        self, parsed: ParsedManifest, outcomes: list[Any], *, children: bool = False
    ) -> None:
        """ManifestBlobUnknown unless the outcomes of :meth:`_reference_steps` (first in
        *outcomes*) show every reference in place."""
        blobs = list(dict.fromkeys(parsed.blobs))
        missing_blobs = [
            d
            for i, d in enumerate(blobs)
            if not await self.blobs.exists_from(d, outcomes[2 * i], outcomes[2 * i + 1])
        ]
        if missing_blobs:
            raise ManifestBlobUnknown(
                f"manifest references {len(missing_blobs)} blob(s) not in {self.name}",
                detail={"digests": [str(d) for d in missing_blobs]},
            )
        if (children or self.strict_index) and parsed.manifests:
            children_outcomes = outcomes[2 * len(blobs) :]
            missing = [
                d
                for d, outcome in zip(
                    dict.fromkeys(parsed.manifests), children_outcomes, strict=False
                )
                if isinstance(outcome, PathNotFound)
            ]
            if missing:
                raise ManifestBlobUnknown(
                    f"index references {len(missing)} manifest(s) not in {self.name}",
                    detail={"digests": [str(d) for d in missing]},
                )

    async def tag(self, tag: str, digest: Digest) -> None:
        """Point *tag* at a revision already stored here (the archive importer, the proxy).

        Safe against a GC run that collects the revision meanwhile by the same protocol
        as :meth:`put`: the tag is written, then the revision confirmed (see
        :meth:`_keep_tagged`); ManifestUnknown or ManifestBlobUnknown when its content
        is gone, with the tag removed again.
        """
        validate_tag(tag)
        if not await self.has_revision(digest):
            raise ManifestUnknown(detail={"digest": str(digest)})
        rules, current = await self._check_tag(tag, digest)
        await self._write_tag(
            tag,
            digest,
            lambda linked: self._keep_tagged(tag, None, None, True, digest=digest, linked=linked),
        )
        if rules is not None:
            await rules.tag_changed(tag, current, digest)
        if self.on_stored is not None:
            cached = self.cache.get(digest)
            self.on_stored(self._key, digest, cached[1] if cached else "", tag)

    async def _keep_tagged(
        self,
        tag: str,
        parsed: ParsedManifest | None,
        body: bytes | None,
        check_references: bool,
        *,
        digest: Digest | None = None,
        linked: bool | None = None,
    ) -> None:
        """Confirm, after writing *tag*, that the revision it names is still linked.

        Between the revision's write (or :meth:`tag`'s check) and the tag's write the
        manifest is untagged, and a GC run collecting untagged manifests, a retention
        rule or a client's DELETE may remove the revision. Still linked now: any GC run
        that removes it later re-reads the repositories after that, sees this tag and
        keeps everything it reaches (lifecycle/gc.py). Gone: it is linked again as a push
        links it (bytes and revision, then its blobs and, for an index, its children
        checked once more); if those are gone too, the tag is removed and the write
        refused, so no tag is left naming missing content. One stat on the usual path
        (*linked*: its outcome, when the tag's own storage call made it after the tag).
        """
        digest = parsed.digest if parsed is not None else digest
        assert digest is not None
        if linked is None:
            linked = await self.has_revision(digest)
        if linked:
            return
        try:
            if body is None:
                body = await self._read_body(digest)
            if parsed is None:
                parsed = parse_manifest(body, detect_media_type(body), max_size=self.max_size)
            await asyncio.gather(
                self.store.put_small(body, digest),
                self.driver.write(layout.revision_link(self.name, digest), str(digest).encode()),
            )
            if check_references:
                await self._check_references(parsed, children=True)
            await self.store.put_small(body, digest)
            if self.repo_index is not None:
                await self.repo_index.relinked(self.name)
        except (ManifestUnknown, ManifestBlobUnknown):
            with contextlib.suppress(PathNotFound):
                await self.driver.delete(layout.revision_dir(self.name, digest))
            if await self._current(tag) == digest:
                with contextlib.suppress(PathNotFound):
                    await self.driver.delete(layout.tag_dir(self.name, tag))
            self.links.forget_repository(self._key)
            raise

    # -- lifecycle rules (immutable tags, image quotas) -------------------------------

    async def _rules(self) -> RepositoryPolicy | None:
        return None if self.policy is None else await self.policy.of(self.name)

    async def _current(self, tag: str) -> Digest | None:
        """The tag's digest fresh from storage (never the link cache: rules decide on it)."""
        try:
            link = await self.driver.read(layout.tag_current_link(self.name, tag))
        except PathNotFound:
            return None
        return Digest.parse(link.decode().strip())

    async def _check_tag(
        self, tag: str | None, new: Digest | None
    ) -> tuple[RepositoryPolicy | None, Digest | None]:
        """Ask the registry's rules whether *tag* may point at *new* (None: be deleted)."""
        if tag is None:
            return None, None
        rules = await self._rules()
        if rules is None or not rules.guards_tag(tag):
            return rules, None
        current = await self._current(tag)
        await rules.check_tag(tag, current, new)
        return rules, current

    async def pulled(self, digest: Digest) -> None:
        """A client pulled *digest* (retention's "not pulled for" rule may want to know)."""
        if self.policy is not None:
            await self.policy.pulled(self.name, digest)

    async def _write_tag(
        self,
        tag: str,
        digest: Digest,
        confirm: Callable[[bool | None], Awaitable[None]],
        previous: str | bool | None = False,
        *,
        confirm_in_call: bool = False,
    ) -> None:
        """Point *tag* at *digest*, *confirm* it (:meth:`_keep_tagged`), index it in step.

        The tag's two links and its tag-index entry are written together (one hop on the
        local driver): the index never decides what a tag names, and a failure between
        them, or a confirmation that removes the tag again, leaves it out of step as a
        crash always could (readers check the tag link). The confirmation runs only once
        the tag is visible: that order is what the GC protocol relies on. *previous* is
        the index pointer read beforehand (False: not read yet); attachment tags are
        never indexed (DESIGN, "Attachments"). With *confirm_in_call* the confirmation's
        stat is the last group of the tag's own storage call (after the writes: the
        same order, one hop on the local driver) and *confirm* gets its outcome;
        otherwise *confirm* gets None and makes its own.
        """

        async def load(child: Digest) -> tuple[str, bytes]:
            if not await self.has_revision(child):
                raise ManifestUnknown(detail={"digest": str(child)})
            stored = await self.get_by_digest(child)
            return stored.media_type, stored.body

        link = str(digest).encode()
        writes = [
            steps.write(layout.tag_index_link(self.name, tag, digest), link),
            steps.write(layout.tag_current_link(self.name, tag), link),
        ]
        entry = None
        if not is_attachment_tag(tag):
            if previous is False:
                previous = await self.tag_index.pointer(tag)
            stored = await self.get_by_digest(digest)
            size = await total_size(digest, stored.media_type, stored.body, load)
            entry = self.tag_index.entry_for(tag, digest, size)
            writes += self.tag_index.entry_steps(tag, entry)
        groups = [writes]
        if confirm_in_call:
            groups.append([steps.stat(layout.revision_link(self.name, digest))])
        outcomes = await run_steps(self.driver, groups)
        await confirm(not isinstance(outcomes[1][0], PathNotFound) if confirm_in_call else None)
        self.links.put(self._key, tag, digest)
        if entry is not None:
            await self.tag_index.drop_replaced(
                entry, previous if isinstance(previous, str) else None
            )

    async def delete(self, reference: str) -> None:
        """By digest: the revision, its tags, its referrer entry and its attachments. By tag:
        only the tag."""
        try:
            await self._delete(reference)
        finally:
            self.links.forget_repository(self._key)
            self.links.generation += 1

    async def _delete(self, reference: str) -> None:
        if ":" not in reference:
            tag = validate_tag(reference)
            try:
                await self.driver.stat(layout.tag_current_link(self.name, tag))
            except PathNotFound:
                raise ManifestUnknown(detail={"tag": tag}) from None
            rules, current = await self._check_tag(tag, None)
            await self.driver.delete(layout.tag_dir(self.name, tag))
            await self.tag_index.forget(tag)
            if rules is not None:
                await rules.tag_changed(tag, current, None)
            return
        digest = await self.resolve(reference)
        stored = await self.get_by_digest(digest)
        tags = await self.tags_pointing_at(digest)
        rules = await self._rules() if tags else None
        if rules is not None:  # every tag is checked before any goes
            for tag in tags:
                await rules.check_tag(tag, digest, None)
        # Gone meanwhile (GC collected the manifest once its tags went, or another DELETE):
        # the outcome this request asked for, not an error.
        for tag in tags:
            with contextlib.suppress(PathNotFound):
                await self.driver.delete(layout.tag_dir(self.name, tag))
            await self.tag_index.forget(tag)
            if rules is not None:
                await rules.tag_changed(tag, digest, None)
        with contextlib.suppress(PathNotFound):
            await self.driver.delete(layout.revision_dir(self.name, digest))
        # Its signatures go with it: simple ones and the cosign attachment's tag.
        with contextlib.suppress(PathNotFound):
            await self.driver.delete(layout.simple_signatures_dir(self.name, digest))
        signatures = f"{digest.algorithm}-{digest.hex}.sig"
        try:
            attachment = await self._current(signatures)
        except DigestInvalid:
            attachment = None
        with contextlib.suppress(PathNotFound):
            await self.driver.delete(layout.tag_dir(self.name, signatures))
        subject = _subject_of(stored.body)
        if subject is not None:
            with contextlib.suppress(PathNotFound):
                await self.driver.delete(layout.referrer_entry(self.name, subject, digest))
        # Its attachments (signatures, SBOMs, attestations) go with it: left behind, they
        # would keep an emptied repository listed as holding an image until GC ran.
        # One that an immutable tag of its own protects stays (for GC, like any orphan).
        for child in sorted(await self._attachments_of(digest, attachment), key=str):
            with contextlib.suppress(ManifestUnknown, Denied):
                await self._delete(str(child))
        if self.repo_index is not None and not await self.revisions():
            await self.repo_index.emptied(self.name)

    async def keep_attachment(self, subject: Digest, attachment: Digest) -> bool:
        """After the server attached *attachment* (a signature, an SBOM) to *subject*: is
        the subject still here? If a DELETE took it meanwhile, the attachment is deleted
        too and False returned. The DELETE deletes the revision first and then the
        attachments it finds; an attacher stores its attachment first and then looks for
        the subject here, so one of the two always sees the other (no orphan stays)."""
        if await self.has_revision(subject):
            return True
        with contextlib.suppress(ManifestUnknown, Denied):
            await self.delete(str(attachment))
        return False

    async def _attachments_of(self, subject: Digest, signatures: Digest | None) -> set[Digest]:
        """The manifests attached to *subject*: its cosign attachment and its referrers."""
        found = {signatures} if signatures is not None else set()
        try:
            entries = await self.driver.list(layout.referrers_dir(self.name, subject))
        except PathNotFound:
            return found
        for entry in entries:
            algorithm, _, hex_part = entry.partition("-")
            with contextlib.suppress(DigestInvalid):
                found.add(Digest.parse(f"{algorithm}:{hex_part}"))
        return found

    # -- tags and referrers ----------------------------------------------------------

    async def tags(self) -> list[str]:
        """Every tag, in the spec's lexical order."""
        try:
            names = await self.driver.list(layout.tags_dir(self.name))
        except PathNotFound:
            return []
        return sorted(names)

    async def tags_pointing_at(self, digest: Digest, among: list[str] | None = None) -> list[str]:
        """The tags naming *digest*: of every tag, or of *among* only."""
        wanted = str(digest).encode()
        tags = await self.tags() if among is None else sorted(among)

        async def points(tag: str) -> bool:
            try:
                link = await self.driver.read(layout.tag_current_link(self.name, tag))
            except PathNotFound:
                return False
            return link.strip() == wanted

        found = await asyncio.gather(*(points(tag) for tag in tags))
        return [tag for tag, hit in zip(tags, found, strict=True) if hit]

    async def revisions(self) -> list[Digest]:
        """Every manifest revision linked in this repository, sorted by digest."""
        try:
            algorithms = await self.driver.list(layout.revisions_root(self.name))
        except PathNotFound:
            return []
        found: list[Digest] = []
        for algorithm in algorithms:
            try:
                entries = await self.driver.list(layout.revisions_dir(self.name, algorithm))
            except PathNotFound:
                continue
            for entry in entries:
                with contextlib.suppress(DigestInvalid):
                    found.append(Digest.parse(f"{algorithm}:{entry}"))
        return sorted(found, key=str)

    async def exists(self) -> bool:
        """True when the repository has any manifest revision or tag."""
        try:
            await self.driver.stat(layout.manifests_dir(self.name))
        except PathNotFound:
            return False
        return True

    async def referrers(self, subject: Digest) -> list[dict[str, Any]]:
        """Descriptors of the manifests whose subject is *subject*, by digest order."""
        directory = layout.referrers_dir(self.name, subject)
        try:
            entries = await self.driver.list(directory)
        except PathNotFound:
            return []
        bodies = await asyncio.gather(
            *(_read_or_none(self.driver, f"{directory}/{entry}") for entry in sorted(entries))
        )
        records = []
        for body in bodies:
            if body is None:
                continue
            try:
                record = msgspec.json.decode(body, type=_ReferrerRecord)
            except msgspec.DecodeError:
                continue
            records.append(msgspec.to_builtins(record))
        return records


async def _read_or_none(driver: StorageDriver, path: str) -> bytes | None:
    try:
        return await driver.read(path)
    except PathNotFound:
        return None


_PARSE_INLINE_BYTES = 64 * 1024
"""Manifests up to this size are parsed on the event loop (well under a millisecond)."""


class _SubjectProbe(msgspec.Struct):
    subject: dict[str, Any] | None = None


def _subject_of(body: bytes) -> Digest | None:
    try:
        probe = msgspec.json.decode(body, type=_SubjectProbe)
        if probe.subject is None:
            return None
        return Digest.parse(str(probe.subject.get("digest", "")))
    except (msgspec.DecodeError, msgspec.ValidationError, DigestInvalid):
        return None
