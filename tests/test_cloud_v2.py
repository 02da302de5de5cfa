"""The v2 API on cloud storage: Cargohold server processes on S3 (moto), GCS
(gcp-storage-emulator) and Azure (Azurite), driven by skopeo and plain HTTP.

Covers the full client flow (push, pull, multi-arch copy, delete), uploads in 1 KiB
chunks, one upload whose chunks go to two server processes sharing the bucket,
blob GETs redirected to signed URLs (HEAD never), and layout compatibility with
CNCF Distribution 2.8's S3 driver on the same moto bucket, both ways.
"""

from __future__ import annotations

import json
import random
import secrets
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    DistributionServer,
    RegistryServer,
    sample_image,
    sample_multiarch,
    sha256_digest,
    skopeo,
    unique_repo_name,
    write_oci_layout,
)
from tests.helpers.emulators import AWS_KEY, AWS_REGION, AWS_SECRET, CloudEmulator, FakeTokenServer
from tests.helpers.images import Image, Index
from tests.helpers.registry_api import get_manifest, new_session, push_image

pytestmark = pytest.mark.clients

CLOUDS = ["s3", "gcs", "azure"]
EMULATOR_FIXTURE = {"s3": "moto_server", "gcs": "gcs_emulator", "azure": "azurite"}


@dataclass
class Cloud:
    emulator: CloudEmulator
    bucket: str
    options: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.emulator.kind

    def url(self, prefix: str) -> str:
        return self.emulator.storage_url(self.bucket, prefix)


@pytest.fixture(scope="module")
def token_server() -> Iterator[FakeTokenServer]:
    server = FakeTokenServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def clouds(
    token_server: FakeTokenServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    return {"token_server": token_server, "dir": tmp_path_factory.mktemp("cloud-credentials")}


@pytest.fixture(params=CLOUDS)
def cloud(request: pytest.FixtureRequest, clouds: dict[str, Any]) -> Cloud:
    """Each cloud in turn: its emulator, a bucket for this module, options that can sign."""
    emulator: CloudEmulator = request.getfixturevalue(EMULATOR_FIXTURE[request.param])
    if request.param not in clouds:
        options = emulator.storage_options()
        if emulator.kind == "gcs":  # signed URLs need a service account key
            options["token"] = str(clouds["token_server"].service_account_file(clouds["dir"]))
        bucket = emulator.create_bucket(f"v2-{secrets.token_hex(4)}")
        clouds[request.param] = Cloud(emulator, bucket, options)
    return clouds[request.param]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def write_config(path: Path, cloud: Cloud, **storage: Any) -> Path:
    lines = ["[storage]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in storage.items()]
    lines.append("[storage.options]")
    lines += [f"{key} = {toml_value(value)}" for key, value in cloud.options.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_cargohold(
    registry_factory: Any, cloud: Cloud, tmp_path: Path, prefix: str | None = None, **storage: Any
) -> RegistryServer:
    prefix = prefix or f"srv-{secrets.token_hex(4)}"
    config = write_config(tmp_path / f"cargohold-{secrets.token_hex(3)}.toml", cloud, **storage)
    server: RegistryServer = registry_factory(storage_url=cloud.url(prefix), config=config)
    server.prefix = prefix  # type: ignore[attr-defined]
    return server


def docker_ref(host: str, repo: str, ref: str) -> str:
    return f"docker://{host}/{repo}{'@' if ref.startswith('sha256:') else ':'}{ref}"


def layout_blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()


def assert_pulled(layout: Path, image: Image) -> None:
    for blob in image.blobs():
        assert sha256_digest(layout_blob(layout, blob.digest)) == blob.digest
    assert layout_blob(layout, image.digest) == image.manifest


# -- the full client flow -----------------------------------------------------------------------


def test_skopeo_push_pull_and_delete(registry_factory: Any, cloud: Cloud, tmp_path: Path) -> None:
    server = start_cargohold(registry_factory, cloud, tmp_path)
    repo = unique_repo_name()
    image = sample_image(layers=3)
    write_oci_layout(tmp_path / "src", image, "1.0")
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        f"oci:{tmp_path / 'src'}:1.0",
        docker_ref(server.host, repo, "1.0"),
    )
    raw = skopeo(
        "inspect", "--raw", "--tls-verify=false", docker_ref(server.host, repo, "1.0"), text=False
    )
    assert raw.stdout == image.manifest

    skopeo(
        "copy",
        "--src-tls-verify=false",
        docker_ref(server.host, repo, "1.0"),
        f"oci:{tmp_path / 'out'}:1.0",
    )
    assert_pulled(tmp_path / "out", image)

    skopeo("delete", "--tls-verify=false", docker_ref(server.host, repo, image.digest))
    assert get_manifest(server.url, repo, image.digest).status_code == 404
    assert get_manifest(server.url, repo, "1.0").status_code == 404


def test_skopeo_copies_a_multiarch_index(
    registry_factory: Any, cloud: Cloud, tmp_path: Path
) -> None:
    server = start_cargohold(registry_factory, cloud, tmp_path)
    repo = unique_repo_name()
    index = sample_multiarch(architectures=("amd64", "arm64"))
    write_oci_layout(tmp_path / "src", index, "multi")
    skopeo(
        "copy",
        "--all",
        "--dest-tls-verify=false",
        f"oci:{tmp_path / 'src'}:multi",
        docker_ref(server.host, repo, "multi"),
    )
    raw = skopeo(
        "inspect", "--raw", "--tls-verify=false", docker_ref(server.host, repo, "multi"), text=False
    )
    assert raw.stdout == index.manifest
    for image in index.images:
        child = skopeo(
            "inspect",
            "--raw",
            "--tls-verify=false",
            docker_ref(server.host, repo, image.digest),
            text=False,
        )
        assert child.stdout == image.manifest

    skopeo(
        "copy",
        "--all",
        "--src-tls-verify=false",
        docker_ref(server.host, repo, "multi"),
        f"oci:{tmp_path / 'out'}:multi",
    )
    assert layout_blob(tmp_path / "out", index.digest) == index.manifest
    for image in index.images:
        assert_pulled(tmp_path / "out", image)


# -- uploads ----------------------------------------------------------------------------------------


def chunked_upload(
    servers: list[RegistryServer], repo: str, data: bytes, chunk: int
) -> tuple[str, Any]:
    """POST on the first server, PATCH chunks round-robin over *servers*, PUT on the next one."""
    session = new_session()
    answer = session.post(f"{servers[0].url}/v2/{repo}/blobs/uploads/")
    assert answer.status_code == 202, answer.text
    location = answer.headers["Location"]
    turn = 0
    for start in range(0, len(data), chunk):
        body = data[start : start + chunk]
        server = servers[turn % len(servers)]
        turn += 1
        answer = session.patch(
            urllib.parse.urljoin(server.url + "/", location),
            data=body,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{start}-{start + len(body) - 1}",
            },
        )
        assert answer.status_code == 202, (server, answer.status_code, answer.text)
        assert answer.headers["Range"] == f"0-{start + len(body) - 1}"
        location = answer.headers["Location"]
    digest = sha256_digest(data)
    finisher = servers[turn % len(servers)]
    separator = "&" if "?" in location else "?"
    answer = session.put(
        urllib.parse.urljoin(finisher.url + "/", location) + f"{separator}digest={digest}"
    )
    assert answer.status_code == 201, answer.text
    return digest, session


def test_push_in_1_kib_chunks(registry_factory: Any, cloud: Cloud, tmp_path: Path) -> None:
    server = start_cargohold(registry_factory, cloud, tmp_path)
    repo = unique_repo_name()
    data = random.Random(1).randbytes(48 * 1024 + 5)
    digest, session = chunked_upload([server], repo, data, 1024)
    answer = session.get(f"{server.url}/v2/{repo}/blobs/{digest}")
    assert answer.status_code == 200
    assert answer.content == data


def test_upload_split_across_two_server_processes(
    registry_factory: Any, cloud: Cloud, tmp_path: Path
) -> None:
    """Chunks alternate between two processes sharing the bucket: each one that has no
    hash state for what the other stored rebuilds it by re-reading the parts."""
    first = start_cargohold(registry_factory, cloud, tmp_path)
    second = start_cargohold(registry_factory, cloud, tmp_path, prefix=first.prefix)
    repo = unique_repo_name()
    data = random.Random(2).randbytes(7 * 1024 + 3)
    digest, session = chunked_upload([first, second], repo, data, 1024)
    for server in (first, second):
        answer = session.get(f"{server.url}/v2/{repo}/blobs/{digest}")
        assert answer.status_code == 200
        assert answer.content == data


# -- redirects --------------------------------------------------------------------------------------


def push_one_blob(server: RegistryServer, repo: str, data: bytes) -> str:
    session = new_session()
    digest = sha256_digest(data)
    answer = session.post(f"{server.url}/v2/{repo}/blobs/uploads/?digest={digest}", data=data)
    assert answer.status_code == 201, answer.text
    return digest


def test_blob_get_redirects_to_a_signed_url_and_head_does_not(
    registry_factory: Any, cloud: Cloud, tmp_path: Path
) -> None:
    server = start_cargohold(registry_factory, cloud, tmp_path)
    repo = unique_repo_name()
    data = random.Random(3).randbytes(200_000)
    digest = push_one_blob(server, repo, data)
    session = new_session()

    answer = session.get(f"{server.url}/v2/{repo}/blobs/{digest}", allow_redirects=False)
    assert answer.status_code == 307
    location = answer.headers["Location"]
    assert location.startswith(cloud.emulator.url)
    fetched = new_session().get(location)
    assert fetched.status_code == 200
    assert fetched.content == data

    head = session.head(f"{server.url}/v2/{repo}/blobs/{digest}", allow_redirects=False)
    assert head.status_code == 200
    assert "Location" not in head.headers
    assert head.headers["Content-Length"] == str(len(data))
    assert head.headers["Docker-Content-Digest"] == digest


def test_redirect_off_streams_the_blob_with_ranges(
    registry_factory: Any, moto_server: CloudEmulator, clouds: dict[str, Any], tmp_path: Path
) -> None:
    bucket = moto_server.create_bucket(f"v2-{secrets.token_hex(4)}")
    cloud = Cloud(moto_server, bucket, moto_server.storage_options())
    server = start_cargohold(registry_factory, cloud, tmp_path, redirect=False)
    repo = unique_repo_name()
    data = random.Random(4).randbytes(9 * 1024 * 1024 + 11)
    digest = push_one_blob(server, repo, data)
    session = new_session()
    whole = session.get(f"{server.url}/v2/{repo}/blobs/{digest}", allow_redirects=False)
    assert whole.status_code == 200
    assert whole.content == data
    part = session.get(
        f"{server.url}/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=4194300-4194400"}
    )
    assert part.status_code == 206
    assert part.content == data[4194300:4194401]


# -- layout compatibility with Distribution's S3 driver ---------------------------------------------


class S3DistributionServer(DistributionServer):
    """Distribution 2.8 with its ``s3`` driver on a moto bucket (rootdirectory = our prefix)."""

    def __init__(
        self, moto: CloudEmulator, bucket: str, prefix: str, *, workdir: Path, **kwargs: Any
    ) -> None:
        super().__init__(workdir / "unused-filesystem-root", workdir=workdir, **kwargs)
        self.moto, self.bucket, self.prefix = moto, bucket, prefix

    def config_yaml(self) -> str:
        return (
            "version: 0.1\n"
            "log:\n"
            f"  level: {self.log_level}\n"
            "  accesslog:\n"
            "    disabled: true\n"
            "storage:\n"
            "  s3:\n"
            f"    accesskey: {AWS_KEY}\n"
            f"    secretkey: {AWS_SECRET}\n"
            f"    region: {AWS_REGION}\n"
            f"    regionendpoint: {self.moto.url}\n"
            f"    bucket: {self.bucket}\n"
            f"    rootdirectory: /{self.prefix}\n"
            "    secure: false\n"
            "    v4auth: true\n"
            "  delete:\n"
            "    enabled: true\n"
            "  maintenance:\n"
            "    uploadpurging:\n"
            "      enabled: false\n"
            "http:\n"
            f"  addr: {self.host}\n"
            "  secret: cargohold-tests-not-a-secret\n"
        )

    def base_env(self) -> dict[str, str]:
        env = super().base_env()
        # Distribution's AWS SDK fails against plain-http moto with the host's CA bundle set.
        env.pop("AWS_CA_BUNDLE", None)
        return env


@pytest.fixture
def s3_distribution(
    moto_server: CloudEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    started: list[S3DistributionServer] = []

    def start(bucket: str, prefix: str) -> S3DistributionServer:
        workdir = tmp_path_factory.mktemp("distribution-s3")
        server = S3DistributionServer(moto_server, bucket, prefix, workdir=workdir)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


def assert_served(base_url: str, repo: str, image: Image | Index, tag: str) -> None:
    session = new_session()
    answer = get_manifest(base_url, repo, tag, session=session)
    assert answer.status_code == 200, answer.text
    assert answer.content == image.manifest
    for blob in image.blobs():
        fetched = session.get(f"{base_url}/v2/{repo}/blobs/{blob.digest}")
        assert fetched.status_code == 200, (blob.digest, fetched.status_code)
        assert fetched.content == blob.data


def test_image_pushed_by_distribution_on_s3_is_served_by_cargohold(
    registry_factory: Any, moto_server: CloudEmulator, s3_distribution: Any, tmp_path: Path
) -> None:
    bucket = moto_server.create_bucket(f"interop-{secrets.token_hex(4)}")
    prefix = f"shared-{secrets.token_hex(3)}"
    distribution = s3_distribution(bucket, prefix)
    repo = unique_repo_name()
    image = sample_image(layers=2)
    push_image(distribution.url, repo, image, "1.0")

    cloud = Cloud(moto_server, bucket, moto_server.storage_options())
    cargohold = start_cargohold(registry_factory, cloud, tmp_path, prefix=prefix)
    assert_served(cargohold.url, repo, image, "1.0")
    raw = skopeo(
        "inspect",
        "--raw",
        "--tls-verify=false",
        docker_ref(cargohold.host, repo, "1.0"),
        text=False,
    )
    assert raw.stdout == image.manifest


def test_image_pushed_by_cargohold_on_s3_is_served_by_distribution(
    registry_factory: Any, moto_server: CloudEmulator, s3_distribution: Any, tmp_path: Path
) -> None:
    bucket = moto_server.create_bucket(f"interop-{secrets.token_hex(4)}")
    cloud = Cloud(moto_server, bucket, moto_server.storage_options())
    cargohold = start_cargohold(registry_factory, cloud, tmp_path)
    repo = unique_repo_name()
    index = sample_multiarch()
    write_oci_layout(tmp_path / "src", index, "multi")
    skopeo(
        "copy",
        "--all",
        "--dest-tls-verify=false",
        f"oci:{tmp_path / 'src'}:multi",
        docker_ref(cargohold.host, repo, "multi"),
    )

    distribution = s3_distribution(bucket, cargohold.prefix)
    assert_served(distribution.url, repo, index, "multi")
    for image in index.images:
        assert_served(distribution.url, repo, image, image.digest)
