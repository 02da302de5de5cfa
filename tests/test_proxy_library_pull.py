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
