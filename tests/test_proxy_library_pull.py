"""Pull-through over loopback: a Cargohold fronting another Cargohold and Distribution.

The upstream holds images pushed by the test; the proxy registry has the upstream
in its configuration (``[[upstreams.registries]]``) and loopback allowed. skopeo
and plain HTTP pull through the proxy, and the digests equal the upstream's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests

from tests.helpers import sample_image, sha256_digest, skopeo
from tests.helpers.registry_api import push_image
from tests.helpers.tenants import Seeder, http, store_url


def proxy_config(path: Path, upstream_url: str, **upstream: Any) -> Path:
    fields = {"registry": "test/reg", "name": "up", "url": upstream_url, **upstream}
    lines = ["[upstreams]", 'allow_networks = ["127.0.0.0/8"]', "", "[[upstreams.registries]]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_skopeo_pulls_an_image_through_from_another_cargohold(
    registry_factory: Any, tmp_path: Path
) -> None:
    upstream = registry_factory()
    image = sample_image("pull-through", layers=3)
    push_image(upstream.url, "up/reg/app", image, "1.0")
    proxy = registry_factory(
        config=proxy_config(tmp_path / "proxy.toml", upstream.url, prefix="up/reg")
    )

    dest = tmp_path / "out"
    skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{proxy.host}/test/reg/app:1.0",
        f"oci:{dest}:1.0",
    )

    index = json.loads((dest / "index.json").read_bytes())
    assert index["manifests"][0]["digest"] == image.digest


def test_blobs_pulled_through_are_served_byte_for_byte(
    registry_factory: Any, tmp_path: Path
) -> None:
    upstream = registry_factory()
    image = sample_image("blobs-through", layers=2)
    push_image(upstream.url, "up/reg/app", image, "1.0")
    proxy = registry_factory(
        config=proxy_config(tmp_path / "proxy.toml", upstream.url, prefix="up/reg")
    )

    manifest = requests.get(
        f"{proxy.url}/v2/test/reg/app/manifests/1.0",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=30,
    )
    assert manifest.status_code == 200, manifest.text
    assert manifest.headers["Docker-Content-Digest"] == image.digest
    for blob in image.blobs():
        got = requests.get(f"{proxy.url}/v2/test/reg/app/blobs/{blob.digest}", timeout=30)
        assert got.status_code == 200
        assert sha256_digest(got.content) == blob.digest


# -- permissions, local content, metrics ---------------------------------------------------------


def auth_proxy(
    registry_factory: Any, tmp_path: Path, upstream_url: str
) -> tuple[Any, dict[str, Any]]:
    """A proxy with auth on: registry test/reg (private) pulling through *upstream_url*."""
    (tmp_path / "store").mkdir()
    seed = Seeder(store_url(tmp_path / "store"))
    roles = seed.tenant_with_roles("test/reg")
    config = proxy_config(tmp_path / "proxy.toml", upstream_url, prefix="up/reg")
    with config.open("a") as handle:
        handle.write("\n[auth]\nbootstrap_admin = false\ncache_ttl = 1.0\n")
    server = registry_factory(storage_url=seed.storage, auth=True, config=config)
    return server, roles


def test_pulling_through_a_private_registry_needs_credentials(
    registry_factory: Any, tmp_path: Path
) -> None:
    upstream = registry_factory()
    push_image(upstream.url, "up/reg/app", sample_image("private-through"), "1.0")
    proxy, _ = auth_proxy(registry_factory, tmp_path, upstream.url)

    anonymous = http().get(f"{proxy.url}/v2/test/reg/app/manifests/1.0", timeout=30)

    assert anonymous.status_code == 401


def test_a_reader_and_an_entitlement_token_pull_through(
    registry_factory: Any, tmp_path: Path
) -> None:
    upstream = registry_factory()
    image = sample_image("token-through")
    push_image(upstream.url, "up/reg/app", image, "1.0")
    proxy, roles = auth_proxy(registry_factory, tmp_path, upstream.url)

    for who in ("read", "token"):
        got = http(roles[who].auth).get(
            f"{proxy.url}/v2/test/reg/app/manifests/1.0",
            headers={"Accept": image.media_type},
            timeout=30,
        )
        assert got.status_code == 200, (who, got.text)
        assert got.headers["Docker-Content-Digest"] == image.digest


def test_a_pushed_image_wins_over_the_upstream_s_image_of_the_same_name(
    registry_factory: Any, tmp_path: Path
) -> None:
    upstream = registry_factory()
    push_image(upstream.url, "up/reg/app", sample_image("upstream-side"), "1.0")
    proxy = registry_factory(
        config=proxy_config(tmp_path / "proxy.toml", upstream.url, prefix="up/reg", tag_ttl=0)
    )
    local = sample_image("local-side")

    push_image(proxy.url, "test/reg/app", local, "1.0")
    got = http().get(
        f"{proxy.url}/v2/test/reg/app/manifests/1.0",
        headers={"Accept": local.media_type},
        timeout=30,
    )

    assert got.headers["Docker-Content-Digest"] == local.digest


def test_a_head_of_a_manifest_pulls_it_through(registry_factory: Any, tmp_path: Path) -> None:
    upstream = registry_factory()
    image = sample_image("head-through")
    push_image(upstream.url, "up/reg/app", image, "1.0")
    proxy = registry_factory(
        config=proxy_config(tmp_path / "proxy.toml", upstream.url, prefix="up/reg")
    )

    got = http().head(
        f"{proxy.url}/v2/test/reg/app/manifests/1.0",
        headers={"Accept": image.media_type},
        timeout=30,
    )

    assert got.status_code == 200
    assert got.headers["Docker-Content-Digest"] == image.digest
    assert int(got.headers["Content-Length"]) == image.size


def test_metrics_count_per_upstream_name_and_never_name_a_repository(
    registry_factory: Any, tmp_path: Path
) -> None:
    upstream = registry_factory()
    image = sample_image("metrics-through")
    push_image(upstream.url, "up/reg/app", image, "1.0")
    proxy = registry_factory(
        config=proxy_config(tmp_path / "proxy.toml", upstream.url, prefix="up/reg")
    )
    manifest_url = f"{proxy.url}/v2/test/reg/app/manifests/1.0"
    http().get(manifest_url, headers={"Accept": image.media_type}, timeout=30)
    http().get(manifest_url, headers={"Accept": image.media_type}, timeout=30)
    http().get(f"{proxy.url}/v2/test/reg/app/blobs/{image.layers[0].digest}", timeout=30)

    metrics = http().get(f"{proxy.url}/metrics", timeout=30).text

    upstream_lines = [
        line for line in metrics.splitlines() if line.startswith("cargohold_upstream_")
    ]
    assert 'cargohold_upstream_misses_total{upstream="up"} 2.0' in upstream_lines
    assert 'cargohold_upstream_hits_total{upstream="up"} 1.0' in upstream_lines
    fetched = [
        line for line in upstream_lines if line.startswith("cargohold_upstream_fetched_bytes_total")
    ]
    assert float(fetched[0].rsplit(" ", 1)[1]) == image.size + image.layers[0].size
    assert not any("test/reg" in line or "app" in line.split("{")[-1] for line in upstream_lines)
