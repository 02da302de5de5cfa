"""GC in a loop (grace 0s, settle 0s) while 16 HTTP clients push, mount, tag, untag, delete
manifests and pull; afterwards every tag resolves to a complete image. On local storage
and on moto S3. Every other run also collects every untagged manifest, so pushes race
the collection of their own revision between its write and their tag's.

Settle 0s on local storage on purpose: a manifest push's second blob check and its tag's
confirmation, not a pause, are what keep its tag complete (registry_core/lifecycle/gc.py).

Each backend runs for ``CARGOHOLD_GC_SOAK_SECONDS`` (default 60 s, the issue's proof, in
CI too); ``make test-gc-soak`` runs it for 180 s.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import random
import secrets
import sys
import threading
import time
import traceback
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from drivers import open_driver
from drivers.threads import shared_workers
from registry_core import Registry
from tests.helpers.emulators import CloudEmulator
from tests.helpers.images import Image, build_image, make_random_layer
from tests.helpers.registry_api import new_session
from tests.helpers.server import RegistryServer

CLIENTS = 16
PUSH_ATTEMPTS = 6
REQUEST_TIMEOUT = 120.0
"""Seconds a client waits for one answer: a request the server never answers fails the test,
naming it, instead of holding its client thread (and the test) forever."""
PAUSE = 0.2
"""Seconds between GC runs: back to back, the loop alone would starve the clients on 2 cores."""
SOAK_SECONDS = float(os.environ.get("CARGOHOLD_GC_SOAK_SECONDS", "60"))
COMMON_LAYERS = [make_random_layer(1024 + n, seed=f"common-{n}") for n in range(12)]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def client_session() -> requests.Session:
    """A client's session, each request bounded by :data:`REQUEST_TIMEOUT`."""
    session = new_session()
    send = session.request

    def request(method: str, url: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", REQUEST_TIMEOUT)
        return send(method, url, **kwargs)

    session.request = request  # type: ignore[method-assign]
    return session


class Clients:
    """The shared view of what the clients believe is tagged, and what went wrong."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.lock = threading.Lock()
        self.tags: dict[str, dict[str, Image]] = {}
        self.events: Counter[str] = Counter()
        self.failures: list[str] = []
        self.stop = threading.Event()

    def note(self, event: str) -> None:
        with self.lock:
            self.events[event] += 1

    def fail(self, message: str) -> None:
        with self.lock:
            self.failures.append(message)

    def check(self, response: requests.Response, what: str) -> requests.Response:
        if response.status_code >= 500:
            self.fail(f"{what}: {response.status_code} {response.text[:200]}")
        return response

    # -- client operations, as a registry client does them --------------------------------------

    def upload(self, session: requests.Session, repo: str, data: bytes) -> None:
        started = self.check(session.post(f"{self.base}/v2/{repo}/blobs/uploads/"), "start")
        if started.status_code != 202:
            self.fail(f"upload start answered {started.status_code}")
            return
        location = urllib.parse.urljoin(self.base + "/", started.headers["Location"])
        sep = "&" if "?" in location else "?"
        done = session.put(f"{location}{sep}digest={urllib.parse.quote(sha(data))}", data=data)
        if self.check(done, "upload").status_code != 201:
            self.fail(f"upload answered {done.status_code}: {done.text[:200]}")

    def push(
        self, session: requests.Session, repo: str, image: Image, tag: str, mount_from: str = ""
    ) -> bool:
        """Push like a client: skip blobs the registry says it has (HEAD) or can mount; retry
        with full uploads when the manifest is refused for a blob GC set aside meanwhile."""
        for attempt in range(PUSH_ATTEMPTS):
            for blob in image.blobs():
                if attempt == 0 and mount_from:
                    mounted = session.post(
                        f"{self.base}/v2/{repo}/blobs/uploads/",
                        params={"mount": blob.digest, "from": mount_from},
                    )
                    if self.check(mounted, "mount").status_code == 201:
                        self.note("mounted")
                        continue
                    if mounted.status_code == 202:  # not mountable: an upload session instead
                        session.delete(
                            urllib.parse.urljoin(self.base + "/", mounted.headers["Location"])
                        )
                if attempt == 0:
                    head = session.head(f"{self.base}/v2/{repo}/blobs/{blob.digest}")
                    if self.check(head, "head").status_code == 200:
                        self.note("skipped upload")
                        continue
                self.upload(session, repo, blob.data)
            put = session.put(
                f"{self.base}/v2/{repo}/manifests/{tag}",
                data=image.manifest,
                headers={"Content-Type": image.media_type},
            )
            if self.check(put, "manifest").status_code == 201:
                with self.lock:
                    self.tags.setdefault(repo, {})[tag] = image
                return True
            self.note(f"manifest refused ({put.status_code}), pushed again")
        # Liveness, not safety: with grace 0s a push slower than a GC cycle can lose its
        # blobs every time (what `grace` is for). It leaves no tag, so nothing is broken.
        self.note("push gave up")
        return False

    def pull(self, session: requests.Session, repo: str, tag: str, image: Image) -> None:
        got = session.get(
            f"{self.base}/v2/{repo}/manifests/{tag}", headers={"Accept": image.media_type}
        )
        if self.check(got, "pull manifest").status_code != 200:
            self.note("pull raced an untag")
            return
        if sha(got.content) != got.headers.get("Docker-Content-Digest"):
            self.fail(f"{repo}:{tag} manifest bytes do not match their digest")
        for blob in json.loads(got.content)["layers"]:
            data = session.get(f"{self.base}/v2/{repo}/blobs/{blob['digest']}")
            if self.check(data, "pull blob").status_code != 200:
                self.note(f"pull blob answered {data.status_code}")
            elif sha(data.content) != blob["digest"]:
                self.fail(f"{repo}: blob {blob['digest']} has the wrong bytes")
        self.note("pulled")

    def run_client(self, number: int) -> None:
        rng = random.Random(number)
        session = client_session()
        repo = f"gc/soak/client{number}"
        counter = 0
        while not self.stop.is_set():
            counter += 1
            with self.lock:
                mine = dict(self.tags.get(repo, {}))
                others = [(r, t, i) for r, tags in self.tags.items() for t, i in tags.items()]
            choice = rng.random()
            try:
                if choice < 0.35 or not mine:
                    image = build_image(
                        [
                            make_random_layer(rng.randint(256, 4096), seed=f"{number}-{counter}"),
                            rng.choice(COMMON_LAYERS),
                        ]
                    )
                    if self.push(session, repo, image, f"t{counter}"):
                        self.note("pushed")
                elif choice < 0.5 and others:
                    source, _, image = rng.choice(others)
                    if self.push(session, repo, image, f"m{counter}", mount_from=source):
                        self.note("mount-pushed")
                elif choice < 0.62:
                    image = rng.choice(list(mine.values()))
                    if self.push(session, repo, image, f"r{counter}"):
                        self.note("tagged")
                elif choice < 0.71:
                    tag = rng.choice(list(mine))
                    with self.lock:
                        self.tags[repo].pop(tag, None)
                    gone = session.delete(f"{self.base}/v2/{repo}/manifests/{tag}")
                    if self.check(gone, "untag").status_code != 202:
                        self.fail(f"untag {repo}:{tag} answered {gone.status_code}")
                    self.note("untagged")
                elif choice < 0.8:
                    # The manifest itself, with every tag naming it: its layers become garbage.
                    digest = mine[rng.choice(list(mine))].digest
                    with self.lock:
                        for tag, tagged in list(self.tags[repo].items()):
                            if tagged.digest == digest:
                                del self.tags[repo][tag]
                    gone = session.delete(f"{self.base}/v2/{repo}/manifests/{digest}")
                    if self.check(gone, "delete").status_code != 202:
                        self.fail(f"delete {repo}@{digest} answered {gone.status_code}")
                    self.note("deleted manifest")
                elif others:
                    source, tag, image = rng.choice(others)
                    self.pull(session, source, tag, image)
            except requests.RequestException as exc:
                self.fail(f"client {number}: {exc}")


VERIFIERS = 8
"""Threads reading the tags back at once (each its own session): the check is round trips,
one tag after another it took a minute for the ~5,000 tags a 60 s run leaves."""


def verify_every_tag(base: str, clients: Clients) -> int:
    """Every tag the registry lists, and every tag a client believes it set, is complete."""
    session = new_session()
    repos = session.get(f"{base}/v2/_catalog").json()["repositories"]
    believed = {(r, t) for r, tags in clients.tags.items() for t in tags}
    listed = set()
    for repo in repos:
        answer = session.get(f"{base}/v2/{repo}/tags/list")
        for tag in answer.json().get("tags") or []:
            listed.add((repo, tag))
    assert believed <= listed, sorted(believed - listed)[:5]
    ordered = sorted(listed)
    with ThreadPoolExecutor(VERIFIERS) as pool:
        counts = pool.map(
            lambda share: _verify_tags(base, share),
            [ordered[n::VERIFIERS] for n in range(VERIFIERS)],
        )
        return sum(counts)


def _verify_tags(base: str, tags: list[tuple[str, str]]) -> int:
    """Each of *tags* names a manifest whose every blob reads back with its digest."""
    session = new_session()
    for repo, tag in tags:
        got = session.get(
            f"{base}/v2/{repo}/manifests/{tag}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert got.status_code == 200, (repo, tag, got.status_code)
        manifest = json.loads(got.content)
        assert sha(got.content) == got.headers["Docker-Content-Digest"]
        for blob in [manifest["config"], *manifest["layers"]]:
            data = session.get(f"{base}/v2/{repo}/blobs/{blob['digest']}")
            assert data.status_code == 200, (repo, tag, blob["digest"], data.status_code)
            assert sha(data.content) == blob["digest"]
    return len(tags)


GC_RUN_LIMIT = float(os.environ.get("CARGOHOLD_GC_RUN_LIMIT", "240"))
"""Seconds one GC run may take here before the test fails with every task's and thread's
stack (``CARGOHOLD_GC_RUN_LIMIT``: shorter to hunt a stall)."""


def _wake_up_state() -> str:
    """How worker-thread outcomes reach this loop: its self-pipe (still registered?), what is
    queued on it, and the inbox of outcomes waiting for it (drivers/threads.py)."""
    loop = asyncio.get_running_loop()
    lines = [f"loop: {len(loop._ready)} callback(s) ready, {len(loop._scheduled)} timer(s)"]  # type: ignore[attr-defined]
    ssock = getattr(loop, "_ssock", None)
    if ssock is not None:
        descriptor = ssock.fileno()
        try:
            registered = loop._selector.get_key(descriptor) is not None  # type: ignore[attr-defined]
        except (KeyError, ValueError):
            registered = False
        try:
            kind = oct(os.fstat(descriptor).st_mode)
        except OSError as exc:
            kind = repr(exc)
        lines.append(f"self-pipe: fd {descriptor}, registered {registered}, mode {kind}")
    inbox = shared_workers()._inboxes.get(loop)
    if inbox is not None:
        lines.append(f"inbox: {len(inbox._items)} outcome(s), wake-up due {inbox._scheduled}")
    return "\n".join(lines)


def _every_stack() -> str:
    """Every asyncio task's stack, then every thread's (the worker threads' among them)."""
    stacks = [_wake_up_state()]
    for task in asyncio.all_tasks():
        buffer = io.StringIO()
        task.print_stack(file=buffer)
        stacks.append(f"{task!r}\n{buffer.getvalue()}")
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        stacks.append(
            f"thread {names.get(ident, ident)}:\n{''.join(traceback.format_stack(frame))}"
        )
    return "\n".join(stacks)


async def _watched(run: Any) -> Any:
    """One GC run as a task of its own (as the server's scheduler and the CLI run it); a run
    that outlasts :data:`GC_RUN_LIMIT` fails the test with every task's and thread's stack,
    so a stuck await shows where it is instead of ending in the suite's timeout."""
    task = asyncio.ensure_future(run)
    done, _ = await asyncio.wait([task], timeout=GC_RUN_LIMIT)
    if not done:
        stacks = _every_stack()
        task.cancel()
        raise AssertionError(f"a GC run took over {GC_RUN_LIMIT:.0f} s:\n{stacks}")
    return task.result()


async def soak(server: RegistryServer, registry: Registry, settle: float) -> dict[str, Any]:
    clients = Clients(server.url)
    # Garbage from the start (deleted images), whatever the clients manage to do.
    seeder = new_session()
    for n in range(4):
        seed = build_image([make_random_layer(2048, seed=f"seed-{n}")])
        assert clients.push(seeder, "gc/soak/seed", seed, f"s{n}")
        gone = seeder.delete(f"{server.url}/v2/gc/soak/seed/manifests/{seed.digest}")
        assert gone.status_code == 202
    clients.tags.clear()
    threads = [
        threading.Thread(target=clients.run_client, args=(n,), daemon=True) for n in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    deadline = started + SOAK_SECONDS
    runs, deleted, rescued, untagged = 0, 0, 0, 0
    try:
        while time.monotonic() < deadline:
            policy = {"collect_untagged": lambda repo, digest, mtime: True} if runs % 2 else {}
            report = await _watched(registry.collect_garbage(grace=0.0, settle=settle, **policy))  # type: ignore[arg-type]
            runs += 1
            deleted += report.blobs_deleted
            rescued += report.blobs_rescued
            untagged += report.revisions_removed if policy else 0
            await asyncio.sleep(PAUSE)
    finally:
        looped = time.monotonic()
        clients.stop.set()
        # A client ends its current request first; each is bounded by REQUEST_TIMEOUT.
        joined_by = time.monotonic() + REQUEST_TIMEOUT + 30
        for thread in threads:
            await asyncio.to_thread(thread.join, max(0.0, joined_by - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), _every_stack()
    joined = time.monotonic()
    assert clients.failures == [], clients.failures[:10]
    checked = await asyncio.to_thread(verify_every_tag, server.url, clients)
    final = await registry.collect_garbage(grace=0.0, settle=0.0)
    await asyncio.to_thread(verify_every_tag, server.url, clients)
    summary = {
        "seconds": {
            "loop": round(looped - started, 1),
            "clients_stopping": round(joined - looped, 1),
            "verifying": round(time.monotonic() - joined, 1),
        },
        "gc_runs": runs,
        "blobs_deleted": deleted,
        "blobs_rescued": rescued,
        "untagged_revisions_collected": untagged,
        "tags_checked": checked,
        **clients.events,
    }
    print(json.dumps(summary))
    assert runs >= 2 and deleted + final.blobs_deleted > 0, summary
    assert clients.events["pushed"] + clients.events["mount-pushed"] > 0, summary
    return summary


async def test_gc_in_a_loop_with_16_clients_on_local_storage(
    registry_factory: Any, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    server = registry_factory(storage_url=f"file://{store}")
    registry = Registry(open_driver(f"file://{store}"))
    try:
        await soak(server, registry, settle=0.0)
    finally:
        await registry.close()


async def test_gc_in_a_loop_with_16_clients_on_moto_s3(
    registry_factory: Any, moto_server: CloudEmulator, tmp_path: Path
) -> None:
    bucket = moto_server.create_bucket(f"gc-{secrets.token_hex(4)}")
    url = moto_server.storage_url(bucket, f"soak-{secrets.token_hex(3)}")
    options = moto_server.storage_options()
    config = tmp_path / "cargohold.toml"
    config.write_text(
        "[storage.options]\n"
        f'endpoint_url = "{options["endpoint_url"]}"\n'
        f'key = "{options["key"]}"\n'
        f'secret = "{options["secret"]}"\n'
        "[storage.options.client_kwargs]\n"
        f'region_name = "{options["client_kwargs"]["region_name"]}"\n'
    )
    server = registry_factory(storage_url=url, config=config, env=moto_server.server_env())
    registry = Registry(open_driver(url, **options))
    try:
        # A pause between runs only so that the loop leaves moto (one Python process)
        # time to serve the clients; safety does not depend on it.
        await soak(server, registry, settle=2.0)
    finally:
        await registry.close()
