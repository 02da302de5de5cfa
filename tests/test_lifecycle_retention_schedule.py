"""Retention rules from the TOML file, run by the server on its schedule."""

from __future__ import annotations

import time
from pathlib import Path

from tests.helpers.images import build_image
from tests.helpers.registry_api import new_session, push_image

CONFIG = """
[retention]
interval = "1s"

[retention.rules."acme/prod"]
keep_last = 1
protected = ["latest"]
"""


def tags_of(url: str, repo: str) -> list[str]:
    resp = new_session().get(f"{url}/v2/{repo}/tags/list")
    assert resp.status_code == 200, resp.text
    return resp.json()["tags"]


def test_the_server_applies_configured_rules_on_its_schedule(
    registry_factory, tmp_path: Path
) -> None:
    config = tmp_path / "cargohold.toml"
    config.write_text(CONFIG)
    server = registry_factory(config=config)
    for n, tag in enumerate(["latest", "1", "2", "3"]):
        push_image(server.url, "acme/prod/app", build_image([{"n.txt": str(n)}]), tag)
        time.sleep(0.05)  # distinct link times: "most recent" is well defined

    deadline = time.monotonic() + 30
    while tags_of(server.url, "acme/prod/app") != ["3", "latest"] and time.monotonic() < deadline:
        time.sleep(0.2)

    assert tags_of(server.url, "acme/prod/app") == ["3", "latest"]


def test_registries_without_rules_are_left_alone(registry_factory, tmp_path: Path) -> None:
    config = tmp_path / "cargohold.toml"
    config.write_text(CONFIG)
    server = registry_factory(config=config)
    for n in range(3):
        push_image(server.url, "acme/other/app", build_image([{"n.txt": str(n)}]), f"t{n}")
    push_image(server.url, "acme/prod/app", build_image([{"n.txt": "a"}]), "a")
    push_image(server.url, "acme/prod/app", build_image([{"n.txt": "b"}]), "b")

    deadline = time.monotonic() + 30
    while len(tags_of(server.url, "acme/prod/app")) > 1 and time.monotonic() < deadline:
        time.sleep(0.2)

    assert tags_of(server.url, "acme/prod/app") == ["b"]
    assert tags_of(server.url, "acme/other/app") == ["t0", "t1", "t2"]
