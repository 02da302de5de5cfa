"""Website benchmark: server time to render a large registry's page and a large image's page.

Not a Cargohold-vs-Distribution HTTP workload like the others (Distribution has no
website, and it is not in ``WORKLOADS``): run it on its own,

    .venv/bin/python -m benchmarks.workloads.web                 # the issue's size: 5,000 / 10,000
    .venv/bin/python -m benchmarks.workloads.web --small         # 500 images / 1,000 tags

It builds a store through the library (a registry ``bench/web`` with N images of one
tag each, and an image ``bench/web/big`` with M tags, every tag written through
``ManifestStore.put`` so the tag index is kept as on a push), starts a Cargohold server
on it with auth on, logs in through the login form and requests each page
``--requests`` times on one connection. The server's own time per render comes from the
``Server-Timing`` header the website sets; the client's round trip is reported beside
it. Goal (issue 13): under 100 ms of server time per page. Results are printed as JSON
and written to ``benchmarks/results/web.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from ..harness import REPO_ROOT, free_port, http_status, log

PASSWORD = "bench-password-123"
TENANT = "bench/web"
CONCURRENCY = 32


def _manifest(number: int) -> tuple[bytes, str]:
    config = {"digest": "sha256:" + f"{number:064x}", "size": 100 + number}
    layer = {"digest": "sha256:" + f"{number + 1:064x}", "size": 1000 * (number % 97 + 1)}
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
        }
    ).encode()
    return body, "application/vnd.oci.image.manifest.v1+json"


async def build_store(root: Path, images: int, tags: int) -> None:
    from drivers import open_driver
    from registry_core import Registry
    from registry_core.jobs import Leases
    from registry_core.tenancy import TenancyStore

    driver = open_driver(f"file://{root}")
    registry = Registry(driver)
    tenancy = TenancyStore(driver)
    await tenancy.create_user("bench", PASSWORD, superuser=True)
    await tenancy.create_owner("bench")
    await tenancy.create_registry("bench", "web")
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def put(repository: str, number: int, tag: str) -> None:
        body, media_type = _manifest(number)
        async with semaphore:
            await registry.repository(repository).manifests.put(
                body, media_type, tag, check_references=False
            )

    started = time.monotonic()
    await asyncio.gather(*(put(f"{TENANT}/image-{i:05d}", i, "latest") for i in range(images)))
    await asyncio.gather(*(put(f"{TENANT}/big", i % 50, f"v{i:05d}") for i in range(tags)))
    log(f"store built in {time.monotonic() - started:.1f} s ({images} images, {tags} tags)")
    # What the server's repo-index job does within seconds of the pushes: fold the hints.
    started = time.monotonic()
    async with Leases(driver).hold("repo-index", 120.0) as guard:
        await registry.repo_index.run(guard)
    log(f"repository index compacted in {time.monotonic() - started:.1f} s")
    await registry.close()


def login(base: str) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    page = session.get(base + "/ui/")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text)
    assert token is not None
    answer = session.post(
        base + "/ui/login",
        data={"login_token": token.group(1), "username": "bench", "password": PASSWORD},
    )
    answer.raise_for_status()
    return session


def measure(session: requests.Session, url: str, count: int) -> dict[str, float]:
    server, cpu, client = [], [], []
    for _ in range(count + 1):
        start = time.perf_counter()
        response = session.get(url)
        elapsed = 1000 * (time.perf_counter() - start)
        response.raise_for_status()
        header = response.headers.get("Server-Timing", "")
        timing = re.search(r"page;dur=([0-9.]+)", header)
        used = re.search(r"cpu;dur=([0-9.]+)", header)
        assert timing is not None and used is not None, response.headers
        server.append(float(timing.group(1)))
        cpu.append(float(used.group(1)))
        client.append(elapsed)
    first, first_cpu = server.pop(0), cpu.pop(0)  # cold caches, reported on their own
    client.pop(0)
    return {
        "server_ms_median": round(statistics.median(server), 2),
        "server_ms_max": round(max(server), 2),
        "server_ms_first": round(first, 2),
        # The server process's CPU time per render (all its threads): steady under load.
        "cpu_ms_median": round(statistics.median(cpu), 2),
        "cpu_ms_first": round(first_cpu, 2),
        "client_ms_median": round(statistics.median(client), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--tags", type=int, default=10000)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--small", action="store_true", help="500 images and 1,000 tags")
    parser.add_argument(
        "--workdir", type=Path, help="keep the store here (built only when absent) for reruns"
    )
    args = parser.parse_args()
    if args.small:
        args.images, args.tags = 500, 1000
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        results = bench(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="cargohold-web-bench-") as workdir:
            results = bench(args, Path(workdir))
    report: dict[str, Any] = {
        "images": args.images,
        "tags": args.tags,
        "requests_per_page": args.requests,
        "goal_server_ms": 100,
        "pages": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    target = REPO_ROOT / "benchmarks" / "results" / "web.json"
    target.write_text(text + "\n")
    log(f"written to {target}")


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, dict[str, float]]:
    store = workdir / "store"
    if not store.exists():
        asyncio.run(build_store(store, args.images, args.tags))
    port = free_port()
    config = workdir / "config.toml"
    config.write_text("[auth]\nbootstrap_admin = false\n")
    command = [sys.executable, "-m", "registry_server", "serve", "--listen", f"127.0.0.1:{port}"]
    command += ["--storage", f"file://{store}", "--config", str(config)]
    base = f"http://127.0.0.1:{port}"
    with (workdir / "server.log").open("w") as log_file:
        server = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while http_status(base + "/healthz") != 200:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            session = login(base)
            middle = max(1, args.images // 50 // 2)
            tag_middle = max(1, args.tags // 50 // 2)
            image = f"/ui/r/{TENANT}/images/big"
            pages = {
                "home": "/ui/",
                "registry, page 1": f"/ui/r/{TENANT}",
                f"registry, page {middle}": f"/ui/r/{TENANT}?page={middle}",
                "registry, search": f"/ui/r/{TENANT}?q=image-0042",
                "image, by name": image,
                f"image, by name, page {tag_middle}": f"{image}?page={tag_middle}",
                "image, by date": f"{image}?sort=date&order=desc",
                "image, by size": f"{image}?sort=size&order=desc",
            }
            return {
                name: measure(session, base + path, args.requests) for name, path in pages.items()
            }
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
