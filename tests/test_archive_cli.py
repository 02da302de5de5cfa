"""``cargohold push docker`` / ``pull docker`` / ``login`` as subprocesses against a real server."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import run, sample_image, sha256_digest, skopeo, write_oci_layout
from tests.helpers.images import write_docker_archive
from tests.helpers.server import REPO_ROOT

pytestmark = pytest.mark.clients


def cargohold(*args: str, home: Path, env: dict | None = None, check: bool = True, **kwargs):
    """The real command line, with a private HOME (credentials) and no inherited settings."""
    overrides: dict[str, str | None] = {
        key: None for key in os.environ if key.startswith("CARGOHOLD_")
    }
    overrides.update({"HOME": str(home), "XDG_CONFIG_HOME": None, "PYTHONPATH": str(REPO_ROOT)})
    overrides.update(env or {})
    return run(
        [sys.executable, "-m", "registry_server", *args],
        env=overrides,
        check=check,
        timeout=300,
        **kwargs,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def multi_layer_archive(tmp_path: Path, name: str = "app:1"):
    return write_docker_archive(
        tmp_path / "image.docker",
        name,
        [{"etc/one": "1" * 70_000}, {"usr/two": os.urandom(300_000).hex()}, {"var/three": "3"}],
    )


def test_push_shows_progress_and_a_summary_table(
    file_registry_server, tmp_path: Path, home: Path
) -> None:
    archive = multi_layer_archive(tmp_path, "docker.io/library/app:1")
    done = cargohold(
        "push",
        "docker",
        "acme/prod",
        str(archive.path),
        "--tag",
        "app:1",
        "--tag",
        "app:stable",
        "--url",
        file_registry_server.url,
        home=home,
    )
    assert "uploading image.docker" in done.stderr
    assert "100.0%" in done.stderr and "/s" in done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == [
        "REPOSITORY",
        "TAGS",
        "DIGEST",
        "PLATFORM",
        "LAYERS",
        "SIZE",
        "STORED",
    ]
    row = lines[1].split()
    assert row[:2] == ["acme/prod/app", "1,stable"]
    assert row[3:5] == ["linux/amd64", "3"]
    assert "4 blob(s) stored" in done.stdout
    inspected = skopeo(
        "inspect",
        "--tls-verify=false",
        "--config",
        f"docker://{file_registry_server.host}/acme/prod/app:stable",
    )
    assert json.loads(inspected.stdout)["rootfs"]["diff_ids"] == list(archive.diff_ids)


def test_push_error_is_one_clear_line(file_registry_server, tmp_path: Path, home: Path) -> None:
    bad = tmp_path / "bad.docker"
    bad.write_bytes(b"not a tar" * 1000)
    done = cargohold(
        "push",
        "docker",
        "acme/prod",
        str(bad),
        "--url",
        file_registry_server.url,
        home=home,
        check=False,
    )
    assert done.returncode == 1
    assert "server answered 400: ARCHIVE_INVALID: not a tar archive" in done.stderr


def test_pull_writes_a_tarball_skopeo_reads(
    file_registry_server, tmp_path: Path, home: Path
) -> None:
    image = sample_image("pulled", layers=4)
    write_oci_layout(tmp_path / "layout", image, tag="1")
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        f"oci:{tmp_path / 'layout'}:1",
        f"docker://{file_registry_server.host}/acme/prod/pulled:1",
    )
    out = tmp_path / "image.docker"
    done = cargohold(
        "pull",
        "docker",
        "acme/prod/pulled:1",
        "-o",
        str(out),
        "--url",
        file_registry_server.url,
        home=home,
    )
    assert image.config.digest in done.stdout
    assert not Path(f"{out}.part").exists()
    target = tmp_path / "from-archive"
    skopeo("copy", f"docker-archive:{out}", f"dir:{target}")
    manifest = json.loads((target / "manifest.json").read_bytes())
    assert manifest["config"]["digest"] == image.config.digest
    config = json.loads((target / image.config.hex).read_bytes())
    assert config["rootfs"]["diff_ids"] == list(image.diff_ids)
    assert len(manifest["layers"]) == 4
    names = json.loads(run(["tar", "xOf", str(out), "manifest.json"]).stdout)[0]["RepoTags"]
    assert names == [f"{file_registry_server.host}/acme/prod/pulled:1"]
    # ... and the tarball goes back in under the same name.
    again = cargohold(
        "push", "docker", "acme/prod", str(out), "--url", file_registry_server.url, home=home
    )
    assert again.stdout.splitlines()[1].split()[:2] == ["acme/prod/pulled", "1"]


def test_pull_of_a_missing_image_fails_cleanly(
    file_registry_server, tmp_path: Path, home: Path
) -> None:
    out = tmp_path / "none.docker"
    done = cargohold(
        "pull",
        "docker",
        "acme/prod/none:1",
        "-o",
        str(out),
        "--url",
        file_registry_server.url,
        home=home,
        check=False,
    )
    assert done.returncode == 1 and "MANIFEST_UNKNOWN" in done.stderr
    assert not out.exists() and not Path(f"{out}.part").exists()


# -- with authentication on ------------------------------------------------------------------


def admin(storage: str, *args: str, home: Path, stdin: str | None = None) -> str:
    return cargohold(*args, "--storage", storage, home=home, input=stdin).stdout.strip()


@pytest.fixture
def auth_server(registry_factory, tmp_path_factory, home: Path):
    store = tmp_path_factory.mktemp("auth-store")
    url = f"file://{store}"
    admin(url, "users", "create", "alice", "--password-stdin", home=home, stdin="alice-pw\n")
    admin(url, "users", "create", "bob", "--password-stdin", home=home, stdin="bob-pw\n")
    admin(url, "owners", "create", "acme", home=home)
    admin(url, "registries", "create", "acme/prod", home=home)
    admin(url, "members", "add", "acme/prod", "alice", "--role", "write", home=home)
    admin(url, "members", "add", "acme/prod", "bob", "--role", "read", home=home)
    server = registry_factory(storage_url=url, auth=True)
    server.keys = {
        user: admin(url, "api-keys", "create", user, home=home) for user in ("alice", "bob")
    }
    return server


def test_push_needs_an_api_key_with_write(auth_server, tmp_path: Path, home: Path) -> None:
    archive = multi_layer_archive(tmp_path)
    common = ["push", "docker", "acme/prod", str(archive.path), "--url", auth_server.url]
    anonymous = cargohold(*common, home=home, check=False)
    assert anonymous.returncode == 1 and "server answered 401" in anonymous.stderr
    reader = cargohold(*common, "--api-key", auth_server.keys["bob"], home=home, check=False)
    assert reader.returncode == 1 and "server answered 403" in reader.stderr
    wrong = cargohold(*common, "--api-key", "chk_000000000000_nope", home=home, check=False)
    assert wrong.returncode == 1 and "server answered 401" in wrong.stderr
    writer = cargohold(*common, home=home, env={"CARGOHOLD_API_KEY": auth_server.keys["alice"]})
    assert writer.stdout.splitlines()[1].split()[:2] == ["acme/prod/app", "1"]


def test_login_saves_a_private_credentials_file_push_and_pull_use(
    auth_server, tmp_path: Path, home: Path
) -> None:
    done = cargohold(
        "login",
        auth_server.url,
        "--api-key-stdin",
        home=home,
        input=auth_server.keys["alice"] + "\n",
    )
    path = home / ".config" / "cargohold" / "credentials.toml"
    assert str(path) in done.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert auth_server.keys["alice"] in path.read_text()
    archive = multi_layer_archive(tmp_path)
    cargohold("push", "docker", "acme/prod", str(archive.path), home=home)  # URL and key saved
    out = tmp_path / "back.docker"
    cargohold("pull", "docker", "acme/prod/app:1", "-o", str(out), home=home)
    skopeo("copy", f"docker-archive:{out}", f"dir:{tmp_path / 'check'}")
    manifest = json.loads((tmp_path / "check" / "manifest.json").read_bytes())
    assert manifest["config"]["digest"] == archive.config_digest
    assert sha256_digest(archive.config) == archive.config_digest
    cargohold("logout", auth_server.url, home=home)
    refused = cargohold(
        "pull",
        "docker",
        "acme/prod/app:1",
        "-o",
        str(out),
        "--url",
        auth_server.url,
        home=home,
        check=False,
    )
    assert refused.returncode == 1 and "401" in refused.stderr


def test_pulled_tarball_loads_with_podman(file_registry_server, tmp_path: Path, home: Path) -> None:
    """``podman load`` (the ``docker load`` of a machine without a Docker daemon)."""
    archive = multi_layer_archive(tmp_path, "loadme:1")
    cargohold(
        "push",
        "docker",
        "acme/prod",
        str(archive.path),
        "--url",
        file_registry_server.url,
        home=home,
    )
    out = tmp_path / "loadme.docker"
    cargohold(
        "pull",
        "docker",
        "acme/prod/loadme:1",
        "-o",
        str(out),
        "--url",
        file_registry_server.url,
        home=home,
    )
    scratch = Path(tempfile.mkdtemp(prefix="chp-"))  # podman wants a short runroot
    podman = [
        "podman",
        "--storage-driver",
        "vfs",
        "--root",
        str(scratch / "root"),
        "--runroot",
        str(scratch / "run"),
    ]
    loaded = run([*podman, "load", "-i", str(out)], env={"HOME": str(home)}, timeout=180)
    assert f"{file_registry_server.host}/acme/prod/loadme:1" in loaded.stdout + loaded.stderr
    image_id = run(
        [*podman, "images", "--no-trunc", "--format", "{{.ID}}"], env={"HOME": str(home)}
    )
    shutil.rmtree(scratch, ignore_errors=True)
    assert image_id.stdout.strip().removeprefix("sha256:") == archive.config_digest.split(":")[1]


def test_push_over_the_size_limit_is_refused_before_the_upload(
    registry_factory, tmp_path: Path, home: Path
) -> None:
    server = registry_factory(env={"CARGOHOLD_ARCHIVES_MAX_SIZE": "100000"})
    archive = multi_layer_archive(tmp_path)
    done = cargohold(
        "push",
        "docker",
        "acme/prod",
        str(archive.path),
        "--url",
        server.url,
        home=home,
        check=False,
    )
    assert done.returncode == 1
    assert "server answered 413" in done.stderr and "archives.max_size" in done.stderr
    assert "bytes_in=0" in server.log_text()  # refused on the headers (Expect: 100-continue)
