"""A warm pull through the pull-through cache against the same image pushed locally.

One Cargohold process (``--workers 1``) serves registry ``bench/proxy``, whose upstream is a
Distribution 2.8.2 on 127.0.0.1, and ``bench/local``, where the same 5-layer image (16 MiB
layers) is pushed. After a cold pull, the two are pulled over HTTP (manifest by tag, then
every blob, bodies read) alternately, ``N`` times each, alternating which goes first; it
prints the median wall time and the server's CPU (utime+stime from ``/proc``) per pull.
CPU per pull is the figure a loaded machine disturbs least. Everything binds 127.0.0.1 and
is stopped on exit.

    .venv/bin/python scripts/proxy_warm_vs_local.py WORKDIR [N]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.images import Image, build_image, make_random_layer
from tests.helpers.registry_api import MANIFEST_ACCEPT, new_session, push_image
from tests.helpers.server import DistributionServer, RegistryServer
from tests.helpers.tenants import write_config


def process_cpu(pid: int) -> float:
    """CPU seconds of *pid* and its direct children (the server's worker processes)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def pull(session: requests.Session, url: str, repo: str, image: Image) -> None:
    answer = session.get(f"{url}/v2/{repo}/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
    assert answer.status_code == 200, answer.text
    for blob in image.blobs():
        with session.get(f"{url}/v2/{repo}/blobs/{blob.digest}", stream=True) as answer:
            assert answer.status_code == 200, answer.status_code
            for _ in answer.iter_content(1 << 20):
                pass


def main(workdir: Path, runs: int) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    image = build_image([make_random_layer(16 << 20, seed=f"warm{i}") for i in range(5)])
    with DistributionServer(workdir / "upstream-store", workdir=workdir / "upstream") as up:
        push_image(up.url, "warm", image, "1", session=new_session())
        store = workdir / "store"
        store.mkdir(exist_ok=True)
        config = write_config(
            workdir / "cargohold.toml",
            storage={"url": f"file://{store}"},
            secrets={"key": "warm-vs-local-" + os.urandom(12).hex()},
            upstreams={"allow_networks": ["127.0.0.0/8"]},
        )
        with config.open("a") as fh:
            fh.write(
                '\n[[upstreams.registries]]\nregistry = "bench/proxy"\nname = "up"\n'
                f'url = "{up.url}"\ntag_ttl = "1h"\n'
            )
        with RegistryServer(f"file://{store}", config=config, workdir=workdir / "server") as srv:
            session = new_session()
            push_image(srv.url, "bench/local/warm", image, "1", session=session)
            for repo in ("bench/proxy/warm", "bench/proxy/warm", "bench/local/warm"):
                pull(session, srv.url, repo, image)  # cold, then every cache filled
            found: dict[str, list[tuple[float, float]]] = {"proxy": [], "local": []}
            for run in range(runs):
                for kind in ("proxy", "local") if run % 2 == 0 else ("local", "proxy"):
                    cpu, start = process_cpu(srv.pid), time.perf_counter()
                    pull(session, srv.url, f"bench/{kind}/warm", image)
                    found[kind].append((time.perf_counter() - start, process_cpu(srv.pid) - cpu))
    for kind, values in found.items():
        wall = statistics.median(v[0] for v in values) * 1000
        cpu = statistics.mean(v[1] for v in values) * 1000
        print(f"{kind}: {runs} pulls, wall median {wall:.0f} ms, server CPU mean {cpu:.1f} ms")
    print("load average", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 15)
