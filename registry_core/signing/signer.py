"""Signing what a registry stores: settings, identities, the nudge worker and the catch-up job.

The :class:`Signer` listens to the manifest feed: a stored manifest (push,
archive upload, pull-through cache) is noted in memory with the host name the
client used (:data:`request_host`, set by the server around the request) and
signed by a worker task moments later, off the request path; a periodic
catch-up pass under the ``signing`` lease (and ``sign-missing``) finds what
nudges missed. Signing is idempotent: for every tag pointing at a manifest and
every host name clients use (the request's, ``[server] public_hosts``, the
custom domains, and the hosts earlier pushes came through, remembered per
registry in settings), a signature by the current key is added where missing,
for an index and its platform manifests alike. Attachments are never signed.
This module never imports aiohttp and never holds a private key beyond the
per-process cache of :class:`~.keys.KeyStore`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import time
from collections.abc import Iterable
from typing import Literal

import attrs
import msgspec

from .. import mediatypes as mt
from ..attachments import is_attachment_tag
from ..bounded import BoundedDict
from ..digest import Digest
from ..errors import RegistryError
from ..jobs import LeaseGuard
from ..manifest_feed import CatchUpReport
from ..names import RepositoryName, Tenant
from ..registry import Registry, Repository
from . import cosign, openpgp, payloads
from .keys import KeyKind, KeyRecord, KeyStore, sign_cosign
from .simple import SimpleSignatures

log = logging.getLogger(__name__)

JOB = "signing"
SETTINGS_KIND = "signing"
HOSTS_KIND = "signing-hosts"
MAX_REMEMBERED_HOSTS = 32
MAX_PENDING = 10_000
"""Manifests noted for signing in one process; beyond it the oldest wait for catch-up."""
MAX_TENANTS_CACHED = 4096

request_host: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "cargohold_request_host", default=None
)
"""The host name (``host[:port]``) the current request came in by; the server sets it."""


class SigningSettings(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A registry's own signing settings (absent fields: the server's ``[signing]``)."""

    enabled: bool | None = None
    cosign: bool | None = None
    simple: bool | None = None
    referrers: bool | None = None
    """Also store cosign signatures in the OCI 1.1 referrers form."""
    rsa_bits: Literal[3072, 4096] | None = None
    """Size of the registry's next RSA (simple signing) key: made at creation, on first
    use or by a rotation."""


class _Child(msgspec.Struct):
    digest: str


class _Shape(msgspec.Struct):
    """The two fields of a stored manifest that signing reads (unknown fields ignored)."""

    subject: dict[str, object] | None = None
    manifests: list[_Child] | None = None


class _Hosts(msgspec.Struct, kw_only=True):
    hosts: list[str] = msgspec.field(default_factory=list)


@attrs.frozen
class SigningDefaults:
    """The server-wide ``[signing]`` settings, plus the host names clients use."""

    enabled: bool = False
    cosign: bool = True
    simple: bool = True
    referrers: bool = False
    rsa_bits: int = 3072
    public_hosts: tuple[str, ...] = ()
    domains: tuple[tuple[str, str], ...] = ()
    """``(host, OWNER or OWNER/REGISTRY prefix)`` of ``[domains]``."""


@attrs.frozen
class Effective:
    enabled: bool
    cosign: bool
    simple: bool
    referrers: bool = False
    rsa_bits: int = 3072


@attrs.define
class SignReport:
    identities: list[str] = attrs.field(factory=list)
    cosign_added: int = 0
    simple_added: int = 0


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[: host.index("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Signer:
    """Signs one storage's manifests with per-registry keys (see the module doc)."""

    def __init__(self, registry: Registry, keys: KeyStore, defaults: SigningDefaults) -> None:
        self.registry = registry
        self.keys = keys
        self.defaults = defaults
        # (repository, digest) -> [hosts, tags] noted by nudges, signed by the worker. Under
        # a sustained load the worker yields to requests and this fills towards its cap:
        # tuples (mostly of one), not two sets an entry, keep that at ~0.4 KB an entry.
        self._pending: BoundedDict[tuple[str, Digest], list[tuple[str, ...]]] = BoundedDict(
            MAX_PENDING
        )
        self._wake: asyncio.Event | None = None
        self._last_nudge = 0.0
        self._idle: asyncio.Event | None = None
        self._known_hosts: BoundedDict[Tenant, set[str]] = BoundedDict(MAX_TENANTS_CACHED, lru=True)
        # One read-merge-write of an attachment at a time in this process (two indexes
        # sharing a platform manifest are signed side by side).
        self._merging: dict[tuple[str, Digest], asyncio.Lock] = {}
        self.batch = 8
        """Manifests the worker signs side by side: their storage requests share round
        trips (and the local driver's thread hops) instead of queueing one by one."""
        self.quiet = 0.1
        self.max_delay = 1.0
        self.busy_share = 0.1
        """While this process serves requests, the worker rests between batches so that
        signing takes about this share of its time (see :meth:`_yield_to_requests`) while
        little is waiting: signing runs below the requests' priority, yet never stops."""
        self.max_busy_share = 0.5
        self.backlog_full = 256
        """The share rises with the backlog, from ``busy_share`` (nothing waiting) to
        ``max_busy_share`` (``backlog_full`` manifests noted): under a load that never
        pauses, a fixed share that signs less than is pushed grew the queue by thousands
        of entries (the soak's RSS growth); a rising one settles where signing keeps up."""
        self.rest_poll = 0.01
        self.max_rest = 1.0
        # Requests of this process in flight and started so far (the server's middleware
        # counts them, :meth:`request_started`): the worker's measure of "busy".
        self._in_flight = 0
        self._started = 0
        self._busy_since = 0.0
        self._busy_total = 0.0

    # -- settings ---------------------------------------------------------------------

    async def settings(self, tenant: Tenant) -> SigningSettings:
        stored = await self.registry.settings.get(
            tenant.owner, tenant.registry, SETTINGS_KIND, SigningSettings
        )
        return stored or SigningSettings()

    async def set_settings(self, tenant: Tenant, value: SigningSettings) -> None:
        await self.registry.settings.put(tenant.owner, tenant.registry, SETTINGS_KIND, value)

    async def effective(self, tenant: Tenant) -> Effective:
        own = await self.settings(tenant)
        d = self.defaults
        return Effective(
            enabled=d.enabled if own.enabled is None else own.enabled,
            cosign=d.cosign if own.cosign is None else own.cosign,
            simple=d.simple if own.simple is None else own.simple,
            referrers=d.referrers if own.referrers is None else own.referrers,
            rsa_bits=d.rsa_bits if own.rsa_bits is None else own.rsa_bits,
        )

    # -- a new registry's keys -------------------------------------------------------

    async def make_keys(self, tenant: Tenant) -> list[KeyRecord]:
        """Make a new registry's keys now, as part of its creation, when it signs.

        Every way a registry is made (``cargohold registries create``, the API, the
        website, the bootstrap ``admin/default``) awaits this, so its public keys are
        published (and their private halves sealed in storage) before anything is
        pushed; registries that existed before signing get theirs on first use
        (:meth:`KeyStore.signing_key`). Idempotent: existing keys are returned.
        """
        settings = await self.effective(tenant)
        made: list[KeyRecord] = []
        if not settings.enabled:
            return made
        if settings.cosign:
            made.append((await self.keys.signing_key(tenant, "cosign")).record)
        if settings.simple:
            key = await self.keys.signing_key(tenant, "gpg", rsa_bits=settings.rsa_bits)
            made.append(key.record)
        return made

    async def rotate(self, tenant: Tenant, kind: KeyKind) -> KeyRecord:
        """A new key of *kind* (an RSA one of the registry's ``rsa_bits``) signs from now."""
        settings = await self.effective(tenant)
        return await self.keys.rotate(tenant, kind, rsa_bits=settings.rsa_bits)

    # -- the nudge and its worker -----------------------------------------------------

    def attach(self) -> None:
        """Listen to the registry's manifest feed (call once per process)."""
        self.registry.feed.subscribe(JOB, self._stored)

    def _stored(self, repository: str, digest: Digest, media_type: str, tag: str | None) -> None:
        if tag is None:
            return  # untagged: no identity to sign (an index signs its platform manifests)
        noted = self._pending.get((repository, digest))
        if noted is None:
            noted = self._pending[(repository, digest)] = [(), ()]
        if tag not in noted[1]:
            noted[1] += (tag,)
        host = request_host.get()
        if host and host not in noted[0]:
            noted[0] += (sys.intern(host),)  # a few hosts, shared by every entry
        # O(1) on the request path: a time stamp, and a wake-up only for an idle worker
        # (a waiting worker reads the stamp when its sleep ends: no timer re-armed per PUT).
        self._last_nudge = time.monotonic()
        if self._wake is not None and not self._wake.is_set():
            self._wake.set()

    async def run_forever(self) -> None:
        """Sign what the feed reported, soon after (a task of each server process).

        A push is a burst of requests (blobs, platform manifests, the index): the worker
        waits until nudges pause for ``quiet`` seconds, but never longer than
        ``max_delay`` after the first, so signing does not compete with a short burst
        for this process's CPU and still shows well within 2 s on an idle server; a
        longer burst is signed meanwhile, below the requests' priority (:meth:`drain`).
        """
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        while True:
            if not self._pending:
                self._idle.set()
                await self._wake.wait()
            self._idle.clear()
            first = time.monotonic()
            while True:
                now = time.monotonic()
                until = min(self._last_nudge + self.quiet, first + self.max_delay)
                if until <= now:
                    break
                await asyncio.sleep(until - now)
            self._wake.clear()
            await self.drain()

    async def drain(self) -> None:
        """Sign everything noted so far, ``batch`` manifests at a time (a failure is left
        to the catch-up pass), resting between batches while requests are served."""
        while self._pending:
            batch = []
            while self._pending and len(batch) < self.batch:
                key = next(iter(self._pending))
                batch.append((key, self._pending.pop(key)))
            began, seen = time.monotonic(), self._started
            await asyncio.gather(
                *(
                    self._sign_noted(repo, digest, hosts, tags)
                    for (repo, digest), (hosts, tags) in batch
                )
            )
            if self._pending:
                await self._yield_to_requests(time.monotonic() - began, seen)

    # -- below the requests' priority -------------------------------------------------

    def request_started(self) -> None:
        """A request of this process began (the server's middleware calls this)."""
        if self._in_flight == 0:
            self._busy_since = time.monotonic()
        self._in_flight += 1
        self._started += 1

    def request_finished(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._busy_total += time.monotonic() - self._busy_since

    def _busy(self, seen: int) -> bool:
        return self._in_flight > 0 or self._started != seen

    def _busy_seconds(self) -> float:
        """Seconds so far during which this process had a request in flight."""
        if self._in_flight:
            return self._busy_total + time.monotonic() - self._busy_since
        return self._busy_total

    def _share(self) -> float:
        """The share of a busy process's time that signing takes now (see ``backlog_full``)."""
        fill = min(1.0, len(self._pending) / max(self.backlog_full, 1))
        top = max(self.busy_share, self.max_busy_share)
        return self.busy_share + (top - self.busy_share) * fill

    async def _yield_to_requests(self, spent: float, seen: int) -> None:
        """Rest after a batch that took *spent* seconds while requests keep the process
        busy (*seen*: the count of started requests when the batch began).

        Signing and requests share one event loop and, on a small machine, the CPU: one
        manifest's cosign signature costs about what its PUT did, a simple signature
        several times that. So while requests are in flight, the worker rests until they
        have been served for ``(1 - share) / share`` times the batch's time (9 for the
        default ``busy_share`` of 0.1, 1 at a full backlog; :meth:`_share`): at most about
        that share of a busy process's time goes to signing, and the rest stretches with
        the batch when the machine is loaded. The
        rest ends as soon as requests were in flight less than half of the last
        ``rest_poll`` seconds, so a quiet server (or one answering a poller now and then)
        signs at full speed, and after ``max_rest`` seconds at the latest.
        """
        share = max(self._share(), 0.001)
        if not self._busy(seen) or share >= 1:
            return
        wanted = self._busy_seconds() + spent * (1 - share) / share
        deadline = time.monotonic() + self.max_rest
        while self._busy_seconds() < wanted and time.monotonic() < deadline:
            began, busy = time.monotonic(), self._busy_seconds()
            await asyncio.sleep(self.rest_poll)
            if self._busy_seconds() - busy < 0.5 * (time.monotonic() - began):
                return

    async def _sign_noted(
        self, repository: str, digest: Digest, hosts: tuple[str, ...], tags: tuple[str, ...]
    ) -> None:
        try:
            await self.sign_manifest(repository, digest, hosts, tags)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("signing %s@%s failed; the catch-up pass retries", repository, digest)

    async def idle(self) -> None:
        """Wait until the worker has signed everything noted (tests, benchmarks)."""
        if self._idle is not None:
            while self._pending or not self._idle.is_set():
                await asyncio.sleep(0.01)

    # -- the catch-up job -------------------------------------------------------------

    async def catch_up(
        self, guard: LeaseGuard | None = None, *, full: bool = False
    ) -> CatchUpReport:
        """Sign every manifest stored since the last pass (``full``: every manifest)."""

        async def handle(repository: str, digest: Digest) -> None:
            await self.sign_manifest(repository, digest)

        return await self.registry.feed.catch_up(JOB, handle, guard, full=full)

    # -- signing one manifest ---------------------------------------------------------

    async def hosts_for(self, tenant: Tenant, extra: Iterable[str] = ()) -> list[str]:
        """Every host name clients use for *tenant*; new ones in *extra* are remembered."""
        known = self._known_hosts.get(tenant)
        if known is None:
            stored = await self.registry.settings.get(
                tenant.owner, tenant.registry, HOSTS_KIND, _Hosts
            )
            known = set(stored.hosts if stored else [])
            self._known_hosts[tenant] = known
        new = {h.lower() for h in extra if h} - known - set(self.defaults.public_hosts)
        if new and len(known) < MAX_REMEMBERED_HOSTS:
            known |= new
            await self.registry.settings.put(
                tenant.owner, tenant.registry, HOSTS_KIND, _Hosts(hosts=sorted(known))
            )
        hosts = set(known) | set(self.defaults.public_hosts)
        hosts |= {host for host, _ in self.defaults.domains}
        return sorted(hosts)

    def _domain_prefix(self, host: str) -> str | None:
        for domain, prefix in self.defaults.domains:
            if domain.lower() in (host.lower(), _hostname(host).lower()):
                return prefix.strip("/")
        return None

    def identities(
        self, name: RepositoryName, tags: Iterable[str], hosts: Iterable[str]
    ) -> list[str]:
        """``HOST/NAME:TAG`` for every host and tag, with the name a custom domain shows."""
        found = []
        for host in hosts:
            prefix = self._domain_prefix(host)
            if prefix is None:
                visible = name.value
            elif name.value.startswith(prefix + "/"):
                visible = name.value[len(prefix) + 1 :]
            else:
                continue
            # A domain named without a port stands for its host names seen with one too.
            if (
                prefix is not None
                and ":" not in host
                and any(_hostname(h) == host for h in hosts if h != host)
            ):
                continue
            found.extend(f"{host}/{visible}:{tag}" for tag in tags)
        return sorted(set(found))

    async def _from_unsigned_upstream(self, repo: Repository, tags: list[str]) -> bool:
        """True when every tag came from an upstream configured not to be signed."""
        if not tags:
            return False
        from ..proxy.pullthrough import TagOrigin
        from ..proxy.settings import KIND, UpstreamList
        from ..storage import layout

        tenant = repo.name.tenant
        stored = await self.registry.settings.get(tenant.owner, tenant.registry, KIND, UpstreamList)
        if stored is None:
            return False
        unsigned = {u.name for u in stored.upstreams if not u.sign}
        if not unsigned:
            return False
        for tag in tags:
            try:
                raw = await self.registry.driver.read(layout.proxy_tag_origin(repo.name, tag))
                origin = msgspec.json.decode(raw, type=TagOrigin)
            except Exception:
                return False
            if origin.upstream not in unsigned:
                return False
        return True

    async def sign_manifest(
        self,
        repository: str,
        digest: Digest,
        hosts: Iterable[str] = (),
        tags: Iterable[str] | None = None,
    ) -> SignReport:
        """Add the missing signatures of one manifest (and an index's platform manifests).

        *tags*: only these (a nudge names the tag it wrote; those that still point at
        *digest* are signed); None: every tag pointing at it (catch-up, ``sign-missing``).
        """
        report = SignReport()
        name = RepositoryName.parse(repository)
        settings = await self.effective(name.tenant)
        if not settings.enabled or not (settings.cosign or settings.simple):
            return report
        repo = self.registry.repository(name)
        try:
            # The bytes were validated when they were stored (and a nudge finds them in
            # the manifest cache): only whether it has a subject and its children matter.
            stored = await repo.manifests.get_by_digest(digest)
            if stored.media_type not in mt.MANIFEST_TYPES:
                return report  # e.g. a schema 1 manifest a Distribution bucket holds
            shape = msgspec.json.decode(stored.body, type=_Shape)
            children = [Digest.parse(child.digest) for child in shape.manifests or ()]
        except (RegistryError, ValueError, msgspec.DecodeError, msgspec.ValidationError):
            return report  # deleted meanwhile, or nothing we can read: nothing to sign
        if shape.subject is not None:
            return report
        if tags is None:
            found = await self._tags_naming(repo, digest)
        else:
            found = [t for t in sorted(set(tags)) if await self._points_at(repo, t, digest)]
        tags = [t for t in found if not is_attachment_tag(t)]
        if not tags or await self._from_unsigned_upstream(repo, tags):
            return report
        all_hosts = await self.hosts_for(name.tenant, hosts)
        identities = self.identities(name, tags, all_hosts)
        if not identities:
            log.warning("no host name known for %s: set [server] public_hosts", name.tenant)
            return report
        report.identities = identities
        targets = [digest]
        for child in children:
            if child not in targets:
                targets.append(child)
        for target in targets:
            if settings.cosign:
                added = await self._sign_cosign(repo, target, identities)
                report.cosign_added += added
                if settings.referrers and added:
                    await self._referrer(repo, target)
            if settings.simple:
                report.simple_added += await self._sign_simple(
                    repo, target, identities, settings.rsa_bits
                )
        return report

    async def _tags_naming(self, repo: Repository, digest: Digest) -> list[str]:
        """The tags naming *digest*: the tag index's candidates, each checked by its link
        (every link is read only when some tag predates the index)."""
        names = await repo.manifests.tags()
        candidates = await repo.manifests.tag_index.candidates(digest, names)
        if candidates is None:
            return await repo.manifests.tags_pointing_at(digest)
        return [t for t in candidates if await self._points_at(repo, t, digest)]

    @staticmethod
    async def _points_at(repo: Repository, tag: str, digest: Digest) -> bool:
        try:
            return await repo.manifests.resolve(tag) == digest
        except (RegistryError, ValueError):
            return False

    async def _sign_cosign(self, repo: Repository, digest: Digest, identities: list[str]) -> int:
        key = await self.keys.signing_key(repo.name.tenant, "cosign")
        lock = self._merging.setdefault((repo.name.value, digest), asyncio.Lock())
        try:
            async with lock:
                existing = await cosign.read_attachment(repo, digest)
                have = set()
                for signature in existing:
                    if signature.key_id == key.id:
                        claim = payloads.read_claim(signature.payload)
                        if claim is not None and claim.digest == str(digest):
                            have.add(claim.reference)
                signed = []
                for identity in identities:
                    if identity in have:
                        continue
                    payload = payloads.cosign_payload(identity, str(digest))
                    signed.append((payload, sign_cosign(key, payload), key.id))
                attached = await cosign.add_signatures(repo, digest, signed, existing)
                if attached is not None and not await repo.manifests.keep_attachment(
                    digest, attached
                ):
                    return 0  # deleted while we signed: the signatures went with it
        finally:
            if not lock.locked() and not getattr(lock, "_waiters", None):
                self._merging.pop((repo.name.value, digest), None)
        return len(signed)

    async def _referrer(self, repo: Repository, digest: Digest) -> None:
        key = await self.keys.signing_key(repo.name.tenant, "cosign")
        stored = await repo.manifests.get_by_digest(digest)
        attached = await cosign.put_referrer(repo, digest, stored.media_type, stored.size, key.id)
        if attached is not None:
            await repo.manifests.keep_attachment(digest, attached)

    async def _sign_simple(
        self, repo: Repository, digest: Digest, identities: list[str], rsa_bits: int
    ) -> int:
        key = await self.keys.signing_key(repo.name.tenant, "gpg", rsa_bits=rsa_bits)
        assert key.gpg is not None
        store = SimpleSignatures(self.registry.driver, repo.name)
        have = {r.identity for _, r in await store.records(digest) if r.key == key.id}
        added = 0
        for identity in identities:
            if identity in have:
                continue
            payload = payloads.simple_payload(identity, str(digest))
            signature = await asyncio.to_thread(openpgp.sign, key.gpg, payload)
            await store.add_ours(digest, signature, key.id, identity)
            added += 1
        if added and not await repo.manifests.has_revision(digest):
            await store.delete_all(digest)  # deleted while we signed (as keep_attachment)
            return 0
        return added
