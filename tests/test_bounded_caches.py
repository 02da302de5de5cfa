"""Every per-process cache and queue keyed by something unbounded stays bounded.

A server process sees endless new digests, repositories, tenants, tokens and header
values (issue 14's soak). Each test feeds one structure far more distinct keys than
its cap (or lets entries expire) through the code that fills it, and checks its size:
remove a bound and its test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import threading
import time
import tracemalloc
from collections import OrderedDict

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from drivers import local as local_driver
from drivers import open_driver
from registry_core import auth as auth_module
from registry_core import settings as settings_module
from registry_core.auth import Authenticator, Claims
from registry_core.bounded import BoundedDict
from registry_core.config import AuthConfig
from registry_core.digest import Digest
from registry_core.names import Tenant
from registry_core.registry import Registry
from registry_core.scanning import service as scan_service
from registry_core.scanning.service import ScanService
from registry_core.secrets import SecretBox
from registry_core.settings import SettingsStore
from registry_core.signing import keys as keys_module
from registry_core.signing import openpgp
from registry_core.signing import signer as signer_module
from registry_core.signing.keys import KeyStore
from registry_core.signing.signer import Signer, SigningDefaults, request_host
from registry_core.storage.cache import ENTRY_OVERHEAD, ContentCache, LinkCache
from registry_core.tenancy import TenancyStore
from registry_server.domains import Domains
from registry_server.http.guard import Guard
from registry_server.observability import Metrics


def digest(n: int) -> Digest:
    return Digest.parse("sha256:" + f"{n:064x}")


class Clock:
    """A monotonic clock the test moves by hand (patched into the module under test)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the container ----------------------------------------------------------------------------


def test_bounded_dict_drops_the_oldest_write_beyond_its_cap() -> None:
    cache: BoundedDict[int, int] = BoundedDict(100)
    for n in range(100_000):
        cache[n] = n
    assert len(cache) == 100
    assert list(cache) == list(range(99_900, 100_000))


def test_bounded_dict_in_lru_mode_keeps_what_is_read() -> None:
    cache: BoundedDict[int, int] = BoundedDict(3, lru=True)
    cache[1], cache[2], cache[3] = 1, 2, 3
    assert cache.get(1) == 1
    cache[4] = 4
    assert sorted(cache) == [1, 3, 4]


def test_bounded_dict_drops_expired_entries_from_its_front() -> None:
    cache: BoundedDict[int, float] = BoundedDict(1000)
    for n in range(10):
        cache[n] = float(n)
    assert cache.drop_expired(lambda expires: expires < 5) == 5
    assert list(cache) == [5, 6, 7, 8, 9]


# -- caches of the request path -----------------------------------------------------------------


def test_manifest_cache_counts_each_entry_so_tiny_manifests_cannot_exceed_its_cap() -> None:
    cache = ContentCache(max_bytes=1 << 20)
    for n in range(100_000):
        cache.put(digest(n), b"{}", "application/vnd.oci.image.manifest.v1+json")
    assert len(cache._items) <= (1 << 20) // ENTRY_OVERHEAD
    assert cache.get(digest(99_999)) is not None


def test_link_cache_is_capped_under_a_stream_of_new_digests() -> None:
    links = LinkCache(ttl=3600.0, max_entries=1000)
    for n in range(100_000):
        links.put("acme/prod/app", str(digest(n)), digest(n))
    assert len(links._entries) == 1000
    assert links.get("acme/prod/app", str(digest(99_999))) == digest(99_999)


def test_link_cache_forgets_expired_links_as_new_ones_come(monkeypatch) -> None:
    clock = Clock()
    monkeypatch.setattr("registry_core.storage.cache.time.monotonic", clock)
    links = LinkCache(ttl=1.0)
    for n in range(10_000):
        clock.now += 0.01  # 100 new links a second, each living one second
        links.put("acme/prod/app", str(digest(n)), digest(n))
    assert len(links._entries) <= 101


async def test_settings_cache_is_capped_across_many_tenants(monkeypatch) -> None:
    monkeypatch.setattr(settings_module, "MAX_CACHED", 100)
    store = SettingsStore(open_driver("memory://"), ttl=3600.0)
    for n in range(2000):
        await store.get(f"owner{n}", "reg", "quota", Claims)
    assert len(store._cache) == 100


async def test_settings_cache_forgets_expired_entries(monkeypatch) -> None:
    clock = Clock()
    monkeypatch.setattr("registry_core.settings.time.monotonic", clock)
    store = SettingsStore(open_driver("memory://"), ttl=1.0)
    for n in range(1000):
        clock.now += 0.1
        await store.get(f"owner{n}", "reg", "quota", Claims)
    assert len(store._cache) <= 11


async def test_login_cache_keeps_no_trace_of_wrong_secrets_sprayed_under_a_key_id(
    monkeypatch,
) -> None:
    monkeypatch.setattr(auth_module, "MAX_CACHED_LOGINS", 100)
    tenancy = TenancyStore(open_driver("memory://"))
    authenticator = Authenticator(tenancy, cache_ttl=3600.0)
    for n in range(1000):
        assert await authenticator.login("acme/prod", f"cht_0123456789ab_{n:032x}") is None
    assert len(authenticator._logins) == 100
    assert len(authenticator._by_secret_id) == 0


async def test_registry_and_role_caches_are_capped_across_many_tenants(monkeypatch) -> None:
    monkeypatch.setattr(auth_module, "MAX_CACHED_ACCESS", 50)
    authenticator = Authenticator(TenancyStore(open_driver("memory://")), cache_ttl=3600.0)
    for n in range(500):
        tenant = Tenant(f"owner{n}", "reg")
        await authenticator.registry_record(tenant)
        await authenticator._role("alice", tenant)
    assert len(authenticator._tenants) == 50
    assert len(authenticator._roles) == 50


def make_guard(service: str = "reg.test") -> Guard:
    config = AuthConfig(service=service)
    return Guard(config, TenancyStore(open_driver("memory://")), Domains({}, []))


async def test_bearer_tokens_are_forgotten_once_expired(monkeypatch) -> None:
    guard = make_guard()
    clock = [time.time()]
    monkeypatch.setattr("registry_server.http.guard.time.time", lambda: clock[0])
    for n in range(300):
        now = int(clock[0])
        claims = Claims(
            iss="cargohold", sub="alice", aud="reg.test", exp=now + 2, nbf=now, iat=now, jti=str(n)
        )
        token = await guard.signer.sign(claims)
        request = make_mocked_request(
            "GET", "/v2/", headers={"Authorization": f"Bearer {token}", "Host": "reg.test"}
        )
        identity, _ = await guard.identify(request)
        assert identity.name == "alice"
        clock[0] += 0.1  # ten new tokens a second, each valid two seconds
    assert len(guard._tokens) <= 21


async def test_pull_locks_of_idle_tokens_go_away() -> None:
    guard = make_guard()
    for n in range(1000):
        async with guard.pull_lock(f"token{n}"):
            pass
    gc.collect()
    assert len(guard._pull_locks) == 0


def test_metrics_label_sets_stay_bounded_under_invented_methods() -> None:
    metrics = Metrics()
    for n in range(500):
        request = make_mocked_request(f"X{n}", "/v2/")
        response = web.Response(status=405)
        metrics.observe(request, response, 0.001)
    samples = {
        sample.labels["method"]
        for family in metrics.requests.collect()
        for sample in family.samples
        if "method" in sample.labels
    }
    assert samples == {"OTHER"}


async def test_local_walk_holds_one_batch_of_entries_at_a_time(tmp_path, monkeypatch) -> None:
    for a in range(40):
        for b in range(10):
            (tmp_path / "r" / f"a{a}" / f"b{b}").mkdir(parents=True)
            (tmp_path / "r" / f"a{a}" / f"b{b}" / "link").write_bytes(b"x")
    driver = open_driver(f"file://{tmp_path}")
    batches: list[int] = []
    hop = driver._call

    async def counted(*args):
        found = await hop(*args)
        batches.append(len(found))
        return found

    monkeypatch.setattr(driver, "_call", counted)
    monkeypatch.setattr(local_driver, "WALK_BATCH", 50)
    walked = [entry.path async for entry in driver.walk("r")]
    assert len(walked) == 40 + 40 * 10 * 2
    assert len(batches) > 10
    assert max(batches) <= 50 + 10 * 2  # the batch, plus the rest of one folder
    monkeypatch.setattr(local_driver, "WALK_BATCH", 1_000_000)
    assert [entry.path async for entry in driver.walk("r")] == walked


WIDE = 20_000
OCI_MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def _wide_folder(root: os.PathLike[str]) -> None:
    """A repository's revisions, as a long soak leaves them: WIDE folders of one link each."""
    top = os.path.join(root, "r", "revisions", "sha256")
    os.makedirs(top)
    for n in range(WIDE):
        os.mkdir(os.path.join(top, f"{n:064x}"))
        with open(os.path.join(top, f"{n:064x}", "link"), "wb") as fh:
            fh.write(b"sha256:x")


async def test_local_walk_of_a_wide_folder_holds_a_batch_not_the_folder(
    tmp_path, monkeypatch
) -> None:
    """The feed's catch-up walks every repository's revisions each pass: a walk that read a
    folder of 20,000 revisions whole held all their paths at once, a peak that grew with the
    data stored and, freed, left the worker's heap fragmented (the soak's RSS growth)."""
    _wide_folder(tmp_path)
    driver = open_driver(f"file://{tmp_path}")
    monkeypatch.setattr(local_driver, "WALK_BATCH", 256)
    seen = 0
    tracemalloc.start()
    try:
        async for _entry in driver.walk("r"):
            seen += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == 2 + 2 * WIDE
    # A batch of 256 entries is ~60 KiB; the folder's 20,000 names and paths are ~7 MiB.
    assert peak < 1024 * 1024, peak


def _open_listings(folder: os.PathLike[str]) -> int:
    """This process's descriptors open on folders below *folder* (a walk's listings)."""
    found = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}").startswith(str(folder)):
                found += 1
    return found


async def test_local_walk_left_half_way_closes_its_listings(tmp_path, monkeypatch) -> None:
    for depth in range(6):
        (tmp_path / "r" / "/".join(f"d{n}" for n in range(depth + 1)) / "x").mkdir(parents=True)
        (tmp_path / "r" / "/".join(f"d{n}" for n in range(depth + 1)) / "f").write_bytes(b"1")
    driver = open_driver(f"file://{tmp_path}")
    monkeypatch.setattr(local_driver, "WALK_BATCH", 2)
    walk = driver.walk("r")
    for _ in range(5):
        await anext(walk)
    assert _open_listings(tmp_path) >= 3  # deep in the tree: its listings are open
    await walk.aclose()
    assert _open_listings(tmp_path) == 0

    # Cancelled while a hop reads on its thread: that hop closes them once it is done.
    started, release = threading.Event(), threading.Event()
    real_scan = local_driver._scan_batch

    def slow_scan(*args):
        started.set()
        release.wait(10)
        return real_scan(*args)

    monkeypatch.setattr(local_driver, "_scan_batch", slow_scan)

    async def walk_all() -> None:
        async for _entry in driver.walk("r"):
            pass

    task = asyncio.create_task(walk_all())
    await asyncio.to_thread(started.wait, 10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    release.set()
    deadline = time.monotonic() + 10
    while _open_listings(tmp_path) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert _open_listings(tmp_path) == 0


# -- background work ----------------------------------------------------------------------------


def test_scan_queue_of_a_process_without_the_lease_is_capped(monkeypatch) -> None:
    monkeypatch.setattr(scan_service, "MAX_QUEUED", 100)
    service = ScanService(Registry(open_driver("memory://")))
    for n in range(100_000):
        service.notice(
            "acme/prod/app", digest(n), "application/vnd.oci.image.manifest.v1+json", "1"
        )
        service.request("acme/prod/app", digest(n))
    assert service.queued == 200
    assert (("acme/prod/app", digest(99_999))) in service.pending


def test_signing_queue_is_capped_when_the_worker_falls_behind(monkeypatch) -> None:
    monkeypatch.setattr(signer_module, "MAX_PENDING", 100)
    registry = Registry(open_driver("memory://"))
    signer = Signer(registry, KeyStore(registry.driver, None), SigningDefaults(enabled=True))
    # Reset after: a sync test sets it in the context every later test inherits (a web
    # test's pushes were then signed for "reg.test", not its public host).
    token = request_host.set("reg.test")
    try:
        for n in range(100_000):
            signer._stored(
                "acme/prod/app", digest(n), "application/vnd.oci.image.manifest.v1+json", "1"
            )
    finally:
        request_host.reset(token)
    assert len(signer._pending) == 100


def test_a_full_signing_queue_holds_about_half_a_kilobyte_an_entry() -> None:
    """Under a sustained load the signing worker yields to requests and its queue fills to
    MAX_PENDING (the soak's workers grew by thousands of entries). Each request's host is
    its own string and each digest its own object, as on the request path."""
    registry = Registry(open_driver("memory://"))
    signer = Signer(registry, KeyStore(registry.driver, None), SigningDefaults(enabled=True))
    digests = [digest(n) for n in range(signer_module.MAX_PENDING)]
    outside = request_host.set(request_host.get())  # reset after: later tests inherit it
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n, each in enumerate(digests):
            request_host.set("".join(["reg", ".test"]))
            signer._stored("acme/prod/app", each, OCI_MANIFEST_TYPE, f"v{n % 50}")
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        request_host.reset(outside)
    assert len(signer._pending) == signer_module.MAX_PENDING
    # Keys, entries, a tag each and the queue's own table; the digests are the caller's.
    # Two sets an entry (and a host string each) held ~0.9 KB.
    assert held / signer_module.MAX_PENDING < 500, held


async def test_signing_hosts_are_cached_for_a_bounded_number_of_registries(monkeypatch) -> None:
    monkeypatch.setattr(signer_module, "MAX_TENANTS_CACHED", 50)
    registry = Registry(open_driver("memory://"))
    signer = Signer(registry, KeyStore(registry.driver, None), SigningDefaults(enabled=True))
    for n in range(500):
        await signer.hosts_for(Tenant(f"owner{n}", "reg"))
    assert len(signer._known_hosts) == 50


async def test_signing_key_records_and_locks_are_bounded_across_registries(monkeypatch) -> None:
    monkeypatch.setattr(keys_module, "MAX_KEYS_CACHED", 20)
    store = KeyStore(open_driver("memory://"), SecretBox("test secrets key, long enough"))
    for n in range(60):
        await store.signing_key(Tenant(f"owner{n}", "reg"), "cosign")
    gc.collect()
    assert len(store._signing) == 20
    assert len(store._opened) == 20
    assert len(store._making) == 0


def test_gpg_keyrings_are_bounded_and_removed_from_disk(monkeypatch) -> None:
    monkeypatch.setattr(openpgp, "MAX_KEYRINGS", 2)
    monkeypatch.setattr(openpgp, "_keyrings", OrderedDict())
    made = [openpgp.generate(f"Key {n} <k{n}@cargohold.invalid>", 1024) for n in range(3)]
    folders = [openpgp._keyring_for(key) for key in made]
    try:
        assert list(openpgp._keyrings.values()) == folders[1:]
        assert not os.path.exists(folders[0])
        assert openpgp.sign(made[0], b"payload")  # an evicted key signs again, re-imported
        assert len(openpgp._keyrings) == 2
    finally:
        for folder in openpgp._keyrings.values():
            shutil.rmtree(folder, ignore_errors=True)
