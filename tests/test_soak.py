"""Soak: mixed load on two worker processes, then every acknowledged write read back.

Threads push small blobs (monolithic) and large ones (chunked PATCHes), put manifests
under a few tags each, pull by tag and by digest, list tags and fetch bearer tokens,
all logged in (auth on), against ``cargohold serve --workers 2`` with the product's
defaults, so every tagged image is also signed (cosign and simple signing) and scanned
in the background: on a local folder, then on moto's S3. Every blob is a real
gzip-compressed tar layer (random file content), as images are, so the scanner walks
each one. The run must see no 5xx and no transport error; afterwards every
blob and manifest that got a 2xx reads back with its digest and every tag names the
last manifest put under it. Each worker's RSS may grow less than 10% between the end
of the warm-up (minute 2, or half of a shorter run, and not before eight large blobs
went through) and the end, each figure a median over 10 s (4 s in CI's short runs), and its open file descriptors
must stay level; each worker's manifest cache is filled to its cap first, so that its
filling is not counted as growth. A third scenario ``kill -9``s the server mid-load and
restarts it on the same storage: everything acknowledged is intact and nothing that
was not committed is visible.

Durations: ``SOAK_SECONDS`` (local, default 60) and ``SOAK_S3_SECONDS`` (default 30);
``make soak`` runs 600 and 180. To see what grows: ``SOAK_SMAPS_DIR`` (each worker's
mappings) and ``SOAK_MEMORY_DUMP_DIR`` (its traced heap) at both measuring points.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import random
import secrets
import signal
import socket
import statistics
import tarfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest
import requests

from registry_core.attachments import is_attachment_tag
from registry_core.storage.cache import DEFAULT_CACHE_BYTES, ENTRY_OVERHEAD
from registry_server import memory_dump
from tests.api_support import QUIET_AUTH
from tests.helpers.procs import current_rss_kib
from tests.helpers.server import RegistryServer

pytestmark = pytest.mark.soak

THREADS = 4
TENANT = "acme/prod"
USER, PASSWORD = "soaker", "pw-soak-" + secrets.token_hex(8)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MAX_RSS_GROWTH = 0.10
FULL_SOAK_SECONDS = 600
SHORT_RUN_SLACK_KIB = 16 * 1024
"""A run shorter than the issue's 10 minutes (CI's 60 s) measures from its half-way
point, while the bounded per-process caches (the 8 MiB manifest cache, the signing and
scanning queues, the login and link caches) are still filling towards their caps: there
the bound is 10% or 16 MiB. Each cap is asserted by tests/test_bounded_caches.py; the full
``make soak`` keeps the plain 10%."""
FD_SLACK = 16
WARM_LARGE = 2 * THREADS
RSS_WINDOW = 10.0
SHORT_RSS_WINDOW = 4.0
SHORT_RUN_SECONDS = 120
"""CI's runs (60 s local, 30 s on moto) are shorter than this: there each RSS figure is a
median over SHORT_RSS_WINDOW, five readings; their bound has the 16 MiB slack (below), and
it saves half a minute of a CI run. ``make soak`` (600 s and 180 s) reads over RSS_WINDOW."""
RSS_EVERY = 1.0
SETTLE = 12.0
"""RSS is read with the clients paused: after SETTLE seconds (the in-flight requests done,
one ``malloc_trim`` period past), each figure is the median of one reading a second over
RSS_WINDOW. Under load a worker's RSS swings by 10 MiB and more with what is in flight
(large blobs, layer scans, signatures; one reading caught 92 MiB between two of 68), so
one reading or a short window under load decided the test; a leak is what stays when the
requests are gone, and that is what both points compare. The in-load figures are printed
too."""
FILL_THREADS = 4
FILL_SEED = 1414
MEMORY_DUMP_VARIABLE = "SOAK_MEMORY_DUMP_DIR"
"""A folder: the workers trace their allocations and dump them at both measuring points
(:func:`dump_memory`); compare with ``python -m registry_server.memory_dump A B``. Tracing
slows the workers and adds to their RSS: for finding what grows, not for the bound.
``CARGOHOLD_MEMORY_DUMP_TRACE=0`` is passed on: the allocators' figures only, no tracing."""
LINK_CACHE_TTL = 1.0
"""The default ``manifests.link_cache_ttl``: how stale another process's tag reads may be."""


def seconds(variable: str, default: float) -> float:
    return float(os.environ.get(variable, default))


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(source: random.Random, size: int) -> bytes:
    """A gzip-compressed tar layer of about *size* bytes: one file of random bytes."""
    content = source.randbytes(max(1, size - 1536))
    info = tarfile.TarInfo(f"data/{source.getrandbits(64):016x}")
    info.size = len(content)
    # Header, content padded to a block, two empty blocks: a whole tar, no record padding.
    tar = info.tobuf(tarfile.USTAR_FORMAT) + content + bytes(-len(content) % 512 + 1024)
    # Random content does not compress: stored blocks cost the client no CPU.
    return gzip.compress(tar, compresslevel=0, mtime=0)


def image_manifest(
    config: bytes, layers: list[tuple[str, int]], annotations: dict[str, str] | None = None
) -> bytes:
    """An OCI image manifest as the load puts them (about 600 bytes with two layers)."""
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": n} for d, n in layers],
    }
    if annotations:
        document["annotations"] = annotations
    return json.dumps(document).encode()


# -- the load ----------------------------------------------------------------------------------


@dataclass
class Profile:
    small: tuple[int, int] = (1024, 64 * 1024)
    large: tuple[int, int] = (1 << 20, 4 << 20)
    chunk: int = 1 << 20
    large_share: float = 0.05
    fill_caches: bool = True
    """Fill the manifest caches before the load (:func:`fill_manifest_caches`). Off on
    moto: there each of the fill's ~2,200 manifest PUTs costs a dozen S3 requests (the fill
    took 413 s beside another load, longer than CI's whole moto soak), while that load
    passes only a few hundred manifests through a worker (well under 1 MiB of cache)."""


@dataclass
class Ledger:
    """What the server acknowledged (2xx), what was only attempted, and what went wrong."""

    blobs: dict[tuple[str, str], int] = field(default_factory=dict)
    manifests: dict[tuple[str, str], bytes] = field(default_factory=dict)
    tags: dict[tuple[str, str], str] = field(default_factory=dict)
    attempted_blobs: dict[tuple[str, str], int] = field(default_factory=dict)
    attempted_tags: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    last_attempt: dict[tuple[str, str], str] = field(default_factory=dict)
    """The last digest put under each tag: under ``kill -9`` that PUT may have committed
    without its 201 reaching the client, so the tag may name it (and nothing else new)."""
    tag_history: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    """Every digest a tag was acknowledged with: another process may serve the previous one
    for up to ``manifests.link_cache_ttl`` (documented), never one that was not put."""
    failures: list[tuple[float, str]] = field(default_factory=list)
    requests: int = 0
    large: int = 0
    """Large blobs pushed: the warm-up waits for a few (they set each worker's peak buffers)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append((time.monotonic(), what))


class Worker(threading.Thread):
    """One client: a loop of random operations on its own repository and tags."""

    def __init__(
        self, base: str, index: int, ledger: Ledger, stop: threading.Event, profile: Profile
    ) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.repo = f"{TENANT}/soak-{index}"
        self.index = index
        self.ledger = ledger
        self.stop = stop
        self.profile = profile
        self.random = random.Random(index)
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.auth = (USER, PASSWORD)
        self.blobs: list[str] = []
        self.tag_count = 0
        self.pause = threading.Event()
        """Set by the test: finish the operation under way, then wait until it is cleared."""
        self.idle = threading.Event()

    def run(self) -> None:
        operations = [
            (0.30, self.push_small),
            (self.profile.large_share, self.push_large),
            (0.20, self.put_manifest),
            (0.20, self.pull_by_tag),
            (0.15, self.pull_blob),
            (0.07, self.list_tags),
            (0.03, self.bearer_pull),
        ]
        weights = [w for w, _ in operations]
        while not self.stop.is_set():
            if self.pause.is_set():
                self.idle.set()
                time.sleep(0.05)
                continue
            self.idle.clear()
            operation = self.random.choices([op for _, op in operations], weights)[0]
            try:
                operation()
            except requests.RequestException as exc:
                self.ledger.fail(f"{operation.__name__}: {type(exc).__name__}: {exc}")
                time.sleep(0.05)

    def call(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        response = self.session.request(method, url, timeout=60, **kwargs)
        with self.ledger.lock:
            self.ledger.requests += 1
        if response.status_code >= 500:
            self.ledger.fail(f"{method} {url} -> {response.status_code}: {response.text[:300]}")
        return response

    def expect(self, response: requests.Response, status: int, what: str) -> bool:
        if response.status_code != status:
            self.ledger.fail(f"{what}: {response.status_code} {response.text[:300]}")
            return False
        return True

    def payload(self, low: int, high: int) -> bytes:
        return layer(self.random, self.random.randint(low, high))

    def acknowledge_blob(self, digest: str, size: int, *, layer: bool = True) -> None:
        with self.ledger.lock:
            self.ledger.blobs[(self.repo, digest)] = size
        if layer:  # image configs are JSON: never reused as a layer
            self.blobs.append(digest)

    def push_small(self) -> None:
        data = self.payload(*self.profile.small)
        digest = digest_of(data)
        self.ledger.attempted_blobs[(self.repo, digest)] = len(data)
        url = f"{self.base}/v2/{self.repo}/blobs/uploads/?digest={digest}"
        if self.expect(self.call("POST", url, data=data), 201, "monolithic push"):
            self.acknowledge_blob(digest, len(data))

    def push_large(self) -> None:
        data = self.payload(*self.profile.large)
        digest = digest_of(data)
        self.ledger.attempted_blobs[(self.repo, digest)] = len(data)
        started = self.call("POST", f"{self.base}/v2/{self.repo}/blobs/uploads/")
        if not self.expect(started, 202, "start upload"):
            return
        location = urllib.parse.urljoin(self.base, started.headers["Location"])
        step = self.profile.chunk
        for offset in range(0, len(data), step):
            piece = data[offset : offset + step]
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(piece) - 1}",
            }
            patched = self.call("PATCH", location, data=piece, headers=headers)
            if not self.expect(patched, 202, "chunk"):
                return
            location = urllib.parse.urljoin(self.base, patched.headers["Location"])
        separator = "&" if "?" in location else "?"
        finished = self.call("PUT", f"{location}{separator}digest={digest}")
        if self.expect(finished, 201, "finish upload"):
            self.acknowledge_blob(digest, len(data))
            with self.ledger.lock:
                self.ledger.large += 1

    def put_manifest(self) -> None:
        if not self.blobs:
            return self.push_small()
        config = json.dumps({"architecture": "amd64", "os": "linux", "n": self.tag_count}).encode()
        config_digest = digest_of(config)
        url = f"{self.base}/v2/{self.repo}/blobs/uploads/?digest={config_digest}"
        if not self.expect(self.call("POST", url, data=config), 201, "config push"):
            return
        self.acknowledge_blob(config_digest, len(config), layer=False)
        layers = self.random.sample(self.blobs, min(len(self.blobs), 2))
        with self.ledger.lock:
            sizes = [self.ledger.blobs[(self.repo, d)] for d in layers]
        manifest = image_manifest(config, list(zip(layers, sizes, strict=True)))
        digest = digest_of(manifest)
        tag = f"t{self.index}-{self.tag_count % 5}"
        self.tag_count += 1
        self.ledger.attempted_tags.setdefault((self.repo, tag), set()).add(digest)
        self.ledger.last_attempt[(self.repo, tag)] = digest
        put = self.call(
            "PUT",
            f"{self.base}/v2/{self.repo}/manifests/{tag}",
            data=manifest,
            headers={"Content-Type": OCI_MANIFEST},
        )
        if self.expect(put, 201, "manifest put"):
            with self.ledger.lock:
                self.ledger.manifests[(self.repo, digest)] = manifest
                self.ledger.tags[(self.repo, tag)] = digest
                self.ledger.tag_history.setdefault((self.repo, tag), set()).add(digest)

    def known_tag(self) -> tuple[str, str] | None:
        with self.ledger.lock:
            mine = [(t, d) for (r, t), d in self.ledger.tags.items() if r == self.repo]
        return self.random.choice(mine) if mine else None

    def pull_by_tag(self, session: requests.Session | None = None) -> None:
        known = self.known_tag()
        if known is None:
            return self.push_small()
        tag, digest = known
        got = (session or self.session).get(
            f"{self.base}/v2/{self.repo}/manifests/{tag}",
            headers={"Accept": OCI_MANIFEST},
            timeout=60,
        )
        with self.ledger.lock:
            self.ledger.requests += 1
        with self.ledger.lock:
            history = set(self.ledger.tag_history[(self.repo, tag)])
        if self.expect(got, 200, "pull by tag") and digest_of(got.content) not in history:
            self.ledger.fail(f"tag {tag} gave {digest_of(got.content)}, never put under it")
        manifest = self.call("GET", f"{self.base}/v2/{self.repo}/manifests/{digest}")
        if self.expect(manifest, 200, "pull by digest") and digest_of(manifest.content) != digest:
            self.ledger.fail(f"manifest {digest} read back as {digest_of(manifest.content)}")

    def pull_blob(self) -> None:
        if not self.blobs:
            return self.push_small()
        digest = self.random.choice(self.blobs)
        got = self.call("GET", f"{self.base}/v2/{self.repo}/blobs/{digest}")
        if self.expect(got, 200, "blob pull") and digest_of(got.content) != digest:
            self.ledger.fail(f"blob {digest} read back as {digest_of(got.content)}")

    def list_tags(self) -> None:
        listed = self.call("GET", f"{self.base}/v2/{self.repo}/tags/list")
        if self.known_tag() is not None:
            self.expect(listed, 200, "tag list")

    def bearer_pull(self) -> None:
        scope = f"repository:{self.repo}:pull"
        token = self.call("GET", f"{self.base}/v2/token", params={"scope": scope})
        if not self.expect(token, 200, "token"):
            return
        bearer = requests.Session()
        bearer.trust_env = False
        bearer.headers["Authorization"] = f"Bearer {token.json()['token']}"
        with bearer:
            self.pull_by_tag(bearer)


def run_load(base: str, ledger: Ledger, profile: Profile, stop: threading.Event) -> list[Worker]:
    workers = [Worker(base, i, ledger, stop, profile) for i in range(THREADS)]
    for worker in workers:
        worker.start()
    return workers


# -- the server and its processes ---------------------------------------------------------------


def seed(storage: str, options: dict[str, Any]) -> None:
    import asyncio

    from drivers import open_driver
    from registry_core.tenancy import TenancyStore

    async def work() -> None:
        driver = open_driver(storage, **options)
        try:
            store = TenancyStore(driver)
            owner, registry = TENANT.split("/")
            await store.create_user(USER, PASSWORD)
            await store.create_owner(owner)
            await store.create_registry(owner, registry)
            await store.add_member(owner, registry, USER, "write")
        finally:
            await driver.close()

    asyncio.run(work())


def toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def write_server_config(path: Path, options: dict[str, Any]) -> Path:
    lines = ["[auth]", *(f"{k} = {toml(v)}" for k, v in QUIET_AUTH.items())]
    lines += ["[storage]", "redirect = false", f"options = {toml(options)}"]
    # Nothing else: signing and scanning are on, as they are by default with auth.
    path.write_text("\n".join(lines) + "\n")
    return path


def memory_dump_env(folder: str | None) -> dict[str, str] | None:
    """The workers' variables for :data:`MEMORY_DUMP_VARIABLE` (the server helper drops
    inherited ``CARGOHOLD_*`` ones): its folder, and whether to trace."""
    if not folder:
        return None
    env = {memory_dump.DUMP_DIR_VARIABLE: folder}
    if (trace := os.environ.get(memory_dump.TRACE_VARIABLE)) is not None:
        env[memory_dump.TRACE_VARIABLE] = trace
    return env


def start_server(tmp: Path, storage: str, options: dict[str, Any] | None = None) -> RegistryServer:
    options = options or {}
    seed(storage, options)
    config = write_server_config(tmp / "soak.toml", options)
    folder = os.environ.get(MEMORY_DUMP_VARIABLE)
    server = RegistryServer(
        storage,
        config=config,
        auth=True,
        extra_args=["--workers", "2"],
        workdir=tmp,
        env=memory_dump_env(folder),
    )
    server.start()
    return server


def worker_pids(server: RegistryServer) -> list[int]:
    """The server's worker processes (children of the process the test started)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == server.pid:
            pids.append(int(entry))
    return sorted(pids)


@dataclass
class Sample:
    rss_kib: dict[int, int]
    fds: dict[int, int]
    cpu: dict[int, float]
    """CPU seconds (user + system) each worker has used, at the end of the window."""


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def sample(pids: list[int], window: float = RSS_WINDOW) -> Sample:
    """Each worker's median RSS over *window* seconds, and its open descriptors at the end."""
    readings: dict[int, list[int]] = {pid: [] for pid in pids}
    until = time.monotonic() + window
    while True:
        for pid in pids:
            readings[pid].append(current_rss_kib(pid))
        if time.monotonic() >= until:
            break
        time.sleep(RSS_EVERY)
    return Sample(
        {pid: statistics.median_low(values) for pid, values in readings.items()},
        {pid: len(os.listdir(f"/proc/{pid}/fd")) for pid in pids},
        {pid: cpu_seconds(pid) for pid in pids},
    )


def settled(workers: list[Worker], pids: list[int], point: str, window: float) -> Sample:
    """:func:`sample` once every client is paused and SETTLE seconds have passed.

    With ``SOAK_SMAPS_DIR`` set, each worker's ``/proc/PID/smaps`` is also copied there
    (``PID-POINT.smaps``) at the end of the window, to see which mappings grew: the
    heaps, pymalloc's arenas, large blocks or file pages (issue 14's evidence).
    """
    for worker in workers:
        worker.pause.set()
    for worker in workers:
        worker.idle.wait(timeout=120)
    time.sleep(SETTLE)
    figures = sample(pids, window)
    if folder := os.environ.get("SOAK_SMAPS_DIR"):
        for pid in pids:
            smaps = Path(f"/proc/{pid}/smaps").read_text()
            Path(folder, f"{pid}-{point}.smaps").write_text(smaps)
    if folder := os.environ.get(MEMORY_DUMP_VARIABLE):
        for pid in pids:
            dump_memory(pid, Path(folder))
    return figures


def dump_memory(pid: int, folder: Path) -> None:
    """Have worker *pid* dump its traced heap (registry_server/memory_dump.py) and wait for
    the files: ``PID-1`` at the first measuring point, ``PID-2`` at the end."""
    number = len(list(folder.glob(f"{pid}-*.types.json"))) + 1
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 120
    while not (folder / f"{pid}-{number}.types.json").exists():
        assert time.monotonic() < deadline, f"worker {pid} wrote no memory dump"
        time.sleep(0.2)


def worker_of(connection: HTTPConnection, pids: list[int]) -> int:
    """The worker process that accepted *connection* (after it answered a request): the
    one holding the server end of that TCP connection (``/proc/net/tcp``, by inode)."""
    client_host, client_port = connection.sock.getsockname()
    server_host, server_port = connection.sock.getpeername()

    def hex_address(host: str, port: int) -> str:
        return f"{int.from_bytes(socket.inet_aton(host), 'little'):08X}:{port:04X}"

    wanted = (hex_address(server_host, server_port), hex_address(client_host, client_port))
    # A read of /proc/net/tcp is not atomic: a busy table can show one socket twice.
    with open("/proc/net/tcp", encoding="ascii") as fh:
        inodes = {f[9] for f in (line.split() for line in fh) if (f[1], f[2]) == wanted}
    assert len(inodes) == 1, (wanted, inodes)
    (inode,) = inodes
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    raise AssertionError(f"no worker holds connection {wanted}")


def connections_to_each_worker(base: str, pids: list[int]) -> dict[int, HTTPConnection]:
    """One open keep-alive connection to every worker (the kernel picks the worker of a
    new connection, so connect until each was picked)."""
    address = urllib.parse.urlsplit(base)
    found: dict[int, HTTPConnection] = {}
    for _ in range(100):
        connection = HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=60)
        connection.request("GET", "/v2/", headers={"Authorization": basic_auth()})
        answer = connection.getresponse()
        assert answer.status == 200, answer.read()[:300]
        answer.read()
        pid = worker_of(connection, pids)
        if pid in found:
            connection.close()
        else:
            found[pid] = connection
        if len(found) == len(pids):
            return found
    raise AssertionError(f"the kernel never gave a connection to some of {pids}")


def basic_auth() -> str:
    return "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def fill_manifest_caches(
    base: str, repo: str, pids: list[int], cache_bytes: int = DEFAULT_CACHE_BYTES
) -> int:
    """Fill every worker's manifest cache to its cap before the load starts; how many went in.

    The cache (2 MiB a process by default, its cap asserted by tests/test_bounded_caches.py)
    fills at the rate new manifests pass through a worker: under the soak's load it took
    minutes, so RSS measured from minute 2 grew with the cache's own filling (measured:
    +24% with an 8 MiB cache, +9% and +2% for the same run with the cache off). The fill
    uses manifests of the load's own shape and size (about 600 bytes, two layers): filled
    with 128 KiB ones instead (16 entries, in glibc blocks), the cache was at its cap in
    bytes but the load's manifests then replaced them over minutes with ~1,800 entries of
    small objects, moving about 1 MB into pymalloc after minute 2 (session 5). Now the
    load only replaces like with like, and a cache that outgrew its cap would still show
    as growth. Each manifest is PUT through one worker and read through every other one
    (a PUT or a read caches it in the process that serves it), on connections whose
    worker is known, so every cache gets all of them.
    """
    with session() as s:
        config = b'{"architecture":"amd64","os":"linux"}'
        layers = []
        source = random.Random(FILL_SEED)
        for blob in (config, layer(source, 4096), layer(source, 8192)):
            url = f"{base}/v2/{repo}/blobs/uploads/?digest={digest_of(blob)}"
            assert s.post(url, data=blob, timeout=60).status_code == 201
            layers.append((digest_of(blob), len(blob)))
    entry = len(image_manifest(config, layers[1:], {"fill": "0"})) + ENTRY_OVERHEAD
    count = cache_bytes // entry * 5 // 4 + 1  # 25% over the cap
    manifests = [image_manifest(config, layers[1:], {"fill": str(i)}) for i in range(count)]
    path = urllib.parse.urlsplit(base).path + f"/v2/{repo}/manifests/"

    def fill(share: list[bytes]) -> None:
        connections = list(connections_to_each_worker(base, pids).values())
        try:
            for index, manifest in enumerate(share):
                digest = digest_of(manifest)
                first = index % len(connections)  # each worker takes its turn at the PUTs
                order = connections[first:] + connections[:first]
                order[0].request(
                    "PUT",
                    path + digest,
                    body=manifest,
                    headers={"Authorization": basic_auth(), "Content-Type": OCI_MANIFEST},
                )
                put = order[0].getresponse()
                assert put.status == 201, put.read()[:300]
                put.read()
                for connection in order[1:]:
                    headers = {"Authorization": basic_auth(), "Accept": OCI_MANIFEST}
                    connection.request("GET", path + digest, headers=headers)
                    got = connection.getresponse()
                    assert got.status == 200 and got.read() == manifest
        finally:
            for connection in connections:
                connection.close()

    with ThreadPoolExecutor(FILL_THREADS) as pool:
        list(pool.map(fill, [manifests[i::FILL_THREADS] for i in range(FILL_THREADS)]))
    return count


# -- checks afterwards --------------------------------------------------------------------------


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.auth = (USER, PASSWORD)
    return s


def streamed_digest(response: requests.Response) -> str:
    hasher = hashlib.sha256()
    for chunk in response.iter_content(1 << 20):
        hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def lost_or_corrupt(base: str, ledger: Ledger, *, cut_short: bool = False) -> list[str]:
    """Every acknowledged blob, manifest and tag, read back; what does not match.

    With *cut_short* (the server was killed) a tag may also name the last manifest put
    under it, whose PUT the kill interrupted after its commit.
    """
    problems = []
    with session() as s:
        for repo, digest in ledger.blobs:
            with s.get(f"{base}/v2/{repo}/blobs/{digest}", stream=True, timeout=60) as got:
                if got.status_code != 200 or streamed_digest(got) != digest:
                    problems.append(f"blob {repo}@{digest}: {got.status_code}")
        for (repo, digest), body in ledger.manifests.items():
            got = s.get(f"{base}/v2/{repo}/manifests/{digest}", timeout=60)
            if got.status_code != 200 or got.content != body:
                problems.append(f"manifest {repo}@{digest}: {got.status_code}")
        for (repo, tag), digest in ledger.tags.items():
            got = s.head(f"{base}/v2/{repo}/manifests/{tag}", timeout=60)
            named = got.headers.get("Docker-Content-Digest")
            interrupted = cut_short and named == ledger.last_attempt.get((repo, tag))
            if named != digest and not interrupted:
                problems.append(f"tag {repo}:{tag} names {named}, acknowledged {digest}")
    return problems


def soak(server: RegistryServer, duration: float, profile: Profile) -> None:
    ledger = Ledger()
    stop = threading.Event()
    pids = worker_pids(server)
    assert len(pids) == 2, pids
    # Minute 2, as the issue measures; a short run waits half its time (the S3 client's
    # pools and part buffers fill in its first ~15 s, then stay level).
    warm_up = min(120.0, duration / 2)
    window = RSS_WINDOW if duration >= SHORT_RUN_SECONDS else SHORT_RSS_WINDOW
    fill_started = time.monotonic()
    filled = (
        fill_manifest_caches(server.url, f"{TENANT}/soak-fill", pids) if profile.fill_caches else 0
    )
    fill_seconds = time.monotonic() - fill_started
    started = time.monotonic()
    workers = run_load(server.url, ledger, profile, stop)
    try:
        time.sleep(warm_up)
        # Until a few large blobs went through, a short run has not reached its working set.
        while ledger.large < WARM_LARGE and time.monotonic() - started < duration * 0.8:
            time.sleep(0.5)
        warmed_at = time.monotonic() - started
        warm_loaded = sample(pids, window)
        warm = settled(workers, pids, "warm", window)
        warm_requests = ledger.requests
        for worker in workers:
            worker.pause.clear()
        # The pause does not count: the load runs on for the rest of *duration*.
        time.sleep(max(0.0, duration - warmed_at - window))
        end_loaded = sample(pids, window)
        end = settled(workers, pids, "end", window)
        end_requests = ledger.requests
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=120)

    assert ledger.failures == [], ledger.failures[:20]
    assert worker_pids(server) == pids, "a worker process died and was replaced"
    time.sleep(LINK_CACHE_TTL + 0.5)  # every process now sees the last tag writes
    assert ledger.requests > 50 * duration / 60, ledger.requests
    assert len(ledger.tags) >= THREADS, "the load never put a manifest"
    assert lost_or_corrupt(server.url, ledger) == []
    # Every worker's figures first, then the bounds: a failing first worker must not hide
    # the second one's. CPU per request is the workers' CPU (background signing and
    # scanning included) over the requests made between the two measuring points.
    cpu = sum(end.cpu[pid] - warm.cpu[pid] for pid in pids)
    print(
        f"workers' CPU {cpu:.1f} s for {end_requests - warm_requests} requests from the "
        f"first measuring point to the last: "
        f"{1000 * cpu / max(1, end_requests - warm_requests):.2f} ms a request"
    )
    for pid in pids:
        growth = end.rss_kib[pid] / warm.rss_kib[pid] - 1
        print(
            f"worker {pid}: RSS {warm.rss_kib[pid]} -> {end.rss_kib[pid]} KiB "
            f"({growth:+.1%}; under load {warm_loaded.rss_kib[pid]} -> "
            f"{end_loaded.rss_kib[pid]}), fds {warm.fds[pid]} -> {end.fds[pid]}; "
            f"{ledger.requests} requests, {len(ledger.blobs)} blobs ({ledger.large} large) in "
            f"{duration:g}s, measured from {warmed_at:.0f}s (medians over {window:g}s, "
            f"clients paused {SETTLE:g}s before; "
            f"manifest caches filled with {filled} manifests first, in {fill_seconds:.0f}s)"
        )
    for pid in pids:
        growth = end.rss_kib[pid] / warm.rss_kib[pid] - 1
        grown_kib = end.rss_kib[pid] - warm.rss_kib[pid]
        short_run_ok = duration < FULL_SOAK_SECONDS and grown_kib < SHORT_RUN_SLACK_KIB
        assert growth < MAX_RSS_GROWTH or short_run_ok, (
            pid,
            warm.rss_kib[pid],
            end.rss_kib[pid],
        )
        assert end.fds[pid] <= warm.fds[pid] + FD_SLACK, (pid, warm.fds[pid], end.fds[pid])


# -- the scenarios ----------------------------------------------------------------------------


@pytest.fixture
def local_server(tmp_path: Path) -> Iterator[RegistryServer]:
    store = tmp_path / "store"
    store.mkdir()
    server = start_server(tmp_path, f"file://{store}")
    try:
        yield server
    finally:
        server.stop()


def test_mixed_load_on_two_workers_on_local_storage(local_server):
    soak(local_server, seconds("SOAK_SECONDS", 60), Profile())


def test_mixed_load_on_two_workers_on_moto_s3(moto_server, tmp_path: Path):
    bucket = moto_server.create_bucket(f"soak-{secrets.token_hex(4)}")
    server = start_server(
        tmp_path, moto_server.storage_url(bucket, "soak"), moto_server.storage_options()
    )
    try:
        # moto keeps every object in memory: large blobs stay a few MiB, and fewer.
        profile = Profile(
            large=(1 << 20, 6 << 20), chunk=5 << 20, large_share=0.06, fill_caches=False
        )
        soak(server, seconds("SOAK_S3_SECONDS", 30), profile)
    finally:
        server.stop()


def test_kill_9_under_load_keeps_everything_acknowledged_and_shows_nothing_uncommitted(
    local_server,
):
    ledger = Ledger()
    stop = threading.Event()
    workers = run_load(local_server.url, ledger, Profile(large_share=0.15), stop)
    time.sleep(8)
    killed_at = time.monotonic()
    local_server.kill9()
    stop.set()
    for worker in workers:
        worker.join(timeout=120)
    local_server.start()
    time.sleep(LINK_CACHE_TTL + 0.5)

    before_kill = [f for at, f in ledger.failures if at < killed_at]
    assert before_kill == []
    assert lost_or_corrupt(local_server.url, ledger, cut_short=True) == []
    assert uncommitted_visible(local_server.url, ledger) == []


def uncommitted_visible(base: str, ledger: Ledger) -> list[str]:
    """Writes cut short by the kill: each is absent, or whole and valid, never partial."""
    problems = []
    with session() as s:
        for (repo, digest), size in ledger.attempted_blobs.items():
            if (repo, digest) in ledger.blobs:
                continue
            with s.get(f"{base}/v2/{repo}/blobs/{digest}", stream=True, timeout=60) as got:
                if got.status_code == 200 and streamed_digest(got) != digest:
                    problems.append(f"partial blob {repo}@{digest} visible ({size} bytes sent)")
                elif got.status_code not in (200, 404):
                    problems.append(f"blob {repo}@{digest}: {got.status_code}")
        repos = {repo for repo, _ in ledger.attempted_tags}
        for repo in repos:
            listed = s.get(f"{base}/v2/{repo}/tags/list", timeout=60)
            for tag in listed.json().get("tags") or [] if listed.status_code == 200 else []:
                if is_attachment_tag(tag):  # the registry's own signatures, not a client's
                    continue
                got = s.get(
                    f"{base}/v2/{repo}/manifests/{tag}",
                    headers={"Accept": OCI_MANIFEST},
                    timeout=60,
                )
                digest = digest_of(got.content)
                if got.status_code != 200 or digest not in ledger.attempted_tags[(repo, tag)]:
                    problems.append(f"tag {repo}:{tag} -> {got.status_code} {digest}")
                    continue
                for layer in [got.json()["config"], *got.json()["layers"]]:
                    head = s.head(f"{base}/v2/{repo}/blobs/{layer['digest']}", timeout=60)
                    if head.status_code != 200:
                        problems.append(f"tag {repo}:{tag} names missing blob {layer['digest']}")
    return problems
