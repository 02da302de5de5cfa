"""Local object-store emulators for the cloud driver tests: moto (S3), gcp-storage-emulator
(GCS) and Azurite (Azure Blob), each a subprocess on a free 127.0.0.1 port.

Every emulator is a :class:`~tests.helpers.server.ManagedServer` (log file, process
group, stop/kill) with what a test needs to reach it: ``storage_options()`` for the
driver (the fsspec filesystem's options), ``storage_url(bucket, prefix)``,
``create_bucket(name)`` and ``server_env()`` for a Cargohold subprocess.

Start-up commands and quirks are the ones recorded in ``/work/shared/EMULATORS.md``.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from .server import ManagedServer

__all__ = [
    "AZURITE_ACCOUNT",
    "AZURITE_KEY",
    "Azurite",
    "CloudEmulator",
    "FakeTokenServer",
    "GcsEmulator",
    "MotoServer",
    "RecordingProxy",
    "cloud_driver",
    "emulator_missing",
    "unique_bucket",
]

AWS_KEY = "test"
AWS_SECRET = "test"
AWS_REGION = "us-east-1"
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
GCS_PROJECT = "test-project"

_BIN = Path(sys.executable).parent


def unique_bucket(stem: str = "cargohold") -> str:
    """A fresh bucket / container name, valid on all three stores (lowercase, digits, dashes)."""
    return f"{stem}-{secrets.token_hex(4)}"


def _which(name: str) -> str | None:
    local = _BIN / name
    if local.exists():
        return str(local)
    return shutil.which(name)


def emulator_missing(kind: str) -> str | None:
    """Why the emulator for *kind* ("s3", "gcs", "azure") cannot run here, or None."""
    binary = {"s3": "moto_server", "gcs": "gcp-storage-emulator", "azure": "azurite-blob"}[kind]
    if _which(binary) is None:
        return f"{binary} is not installed (make test installs it: pip extras / npm azurite)"
    return None


def _request(
    host: str, port: int, method: str, path: str, body: bytes = b"", headers: Any = None
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class CloudEmulator(ManagedServer):
    """An emulator process; ready as soon as it answers HTTP at all."""

    kind = "?"
    scheme = "?"

    def base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        return env

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {code} during start-up\n"
                    f"--- log {self.log_path} ---\n{self.log_text()}"
                )
            try:
                _request("127.0.0.1", self.port, "GET", self.ready_path)
                return
            except OSError:
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"{self.name} not answering on {self.url} after {self.startup_timeout}s"
                        f"\n--- log ---\n{self.log_text()}"
                    ) from None
                time.sleep(0.05)

    # -- what tests use ---------------------------------------------------------------
    def storage_url(self, bucket: str, prefix: str = "") -> str:
        return f"{self.scheme}://{bucket}/{prefix}".rstrip("/")

    def storage_options(self) -> dict[str, Any]:
        raise NotImplementedError

    def server_env(self) -> dict[str, str | None]:
        """Environment for a Cargohold subprocess using this emulator (besides its config)."""
        return {}

    def create_bucket(self, name: str) -> str:
        raise NotImplementedError


class MotoServer(CloudEmulator):
    """moto's S3 in server mode (``moto_server``)."""

    name = "moto"
    kind = "s3"
    scheme = "s3"

    def command(self) -> list[str]:
        return [_which("moto_server") or "moto_server", "-H", "127.0.0.1", "-p", str(self.port)]

    def storage_options(self) -> dict[str, Any]:
        return {
            "endpoint_url": self.url,
            "key": AWS_KEY,
            "secret": AWS_SECRET,
            "client_kwargs": {"region_name": AWS_REGION},
        }

    def create_bucket(self, name: str) -> str:
        status, body = _request("127.0.0.1", self.port, "PUT", f"/{name}")
        if status not in (200, 409):
            raise RuntimeError(f"moto: create bucket {name}: {status} {body[:300]!r}")
        return name

    def object_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under *prefix* (through moto's own listing, not the driver)."""
        import re

        keys: list[str] = []
        token = ""
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            status, body = _request(
                "127.0.0.1", self.port, "GET", f"/{bucket}?{urllib.parse.urlencode(query)}"
            )
            assert status == 200, body[:300]
            text = body.decode()
            keys += [urllib.parse.unquote(k) for k in re.findall(r"<Key>([^<]*)</Key>", text)]
            found = re.search(r"<NextContinuationToken>([^<]*)<", text)
            if not found:
                return keys
            token = found[1]


class GcsEmulator(CloudEmulator):
    """``gcp-storage-emulator`` (in memory)."""

    name = "gcs-emulator"
    kind = "gcs"
    scheme = "gs"

    def command(self) -> list[str]:
        return [
            _which("gcp-storage-emulator") or "gcp-storage-emulator",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--in-memory",
        ]

    def storage_options(self) -> dict[str, Any]:
        return {"endpoint_url": self.url, "token": "anon", "project": GCS_PROJECT}

    def create_bucket(self, name: str) -> str:
        status, body = _request(
            "127.0.0.1",
            self.port,
            "POST",
            f"/storage/v1/b?project={GCS_PROJECT}",
            json.dumps({"name": name}).encode(),
            {"Content-Type": "application/json"},
        )
        if status not in (200, 409):
            raise RuntimeError(f"gcs emulator: create bucket {name}: {status} {body[:300]!r}")
        return name


class Azurite(CloudEmulator):
    """Azurite's blob service (npm ``azurite``)."""

    name = "azurite"
    kind = "azure"
    scheme = "az"

    def command(self) -> list[str]:
        location = self.workdir / "data"
        location.mkdir(exist_ok=True)
        return [
            _which("azurite-blob") or "azurite-blob",
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.port),
            "--location",
            str(location),
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
        ]

    @property
    def connection_string(self) -> str:
        return (
            "DefaultEndpointsProtocol=http;"
            f"AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={self.url}/{AZURITE_ACCOUNT};"
        )

    def storage_options(self) -> dict[str, Any]:
        return {"connection_string": self.connection_string}

    def create_bucket(self, name: str) -> str:
        from azure.storage.blob import BlobServiceClient

        service = BlobServiceClient.from_connection_string(self.connection_string)
        try:
            service.create_container(name)
        except Exception as exc:
            if "ContainerAlreadyExists" not in str(exc):
                raise
        finally:
            service.close()
        return name


# --- what the driver tests build on the emulators --------------------------------------------


def cloud_driver(
    emulator: CloudEmulator,
    bucket: str,
    prefix: str | None = None,
    *,
    settings: Any = None,
    options: dict[str, Any] | None = None,
    **faults: Any,
) -> Any:
    """An ObjectStoreDriver on *bucket* under a fresh (or the given) prefix.

    With *faults* (``every=``, ``down=``, ``stall=``, ``only=``) its store is wrapped in a
    :class:`drivers.faults.FaultyStore`, reachable as ``driver.store``.
    """
    from drivers import open_driver
    from drivers.faults import FaultyStore
    from drivers.object_store import ObjectStoreDriver

    if prefix is None:
        prefix = f"t-{secrets.token_hex(4)}"
    url = emulator.storage_url(bucket, prefix)
    driver = open_driver(url, settings=settings, **(options or emulator.storage_options()))
    if faults:
        driver = ObjectStoreDriver(FaultyStore(driver.store, **faults), driver.root, settings)
    return driver


class FakeTokenServer:
    """An OAuth token endpoint that hands out a fixed bearer token (for a fake service account).

    GCS signed URLs need a service account's private key; its credentials also fetch
    access tokens from ``token_uri``, which points here instead of Google.
    """

    def __init__(self) -> None:
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                body = json.dumps(
                    {"access_token": "fake-token", "expires_in": 3600, "token_type": "Bearer"}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def service_account_file(self, directory: Path) -> Path:
        """A freshly generated service-account key file whose token URI is this server."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        path = Path(directory) / "service-account.json"
        path.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": GCS_PROJECT,
                    "private_key_id": secrets.token_hex(8),
                    "private_key": pem,
                    "client_email": f"cargohold@{GCS_PROJECT}.iam.gserviceaccount.com",
                    "client_id": "1",
                    "token_uri": self.url,
                }
            )
        )
        return path

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class RecordingProxy:
    """A reverse proxy (aiohttp, on the running loop) that records every request it forwards.

    ``async with RecordingProxy(upstream_url) as proxy:`` then point a client at
    ``proxy.url``; ``proxy.requests`` holds ``(method, path, query dict)`` tuples.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.url = ""

    async def __aenter__(self) -> RecordingProxy:
        import aiohttp
        from aiohttp import web

        self._session = aiohttp.ClientSession(auto_decompress=False)

        async def forward(request: web.Request) -> web.StreamResponse:
            self.requests.append((request.method, request.path, dict(request.query)))
            body = await request.read()
            headers = {
                k: v
                for k, v in request.headers.items()
                if k.lower() not in ("host", "content-length")
            }
            async with self._session.request(
                request.method,
                self.upstream + request.path_qs,
                data=body,
                headers=headers,
                allow_redirects=False,
            ) as answer:
                payload = await answer.read()
                passed = {
                    k: v
                    for k, v in answer.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")
                }
                if request.method == "HEAD":
                    # No body to size it by: the upstream's length is the answer.
                    length = answer.headers.get("Content-Length")
                    if length is not None:
                        passed["Content-Length"] = length
                    response = web.StreamResponse(status=answer.status, headers=passed)
                    await response.prepare(request)
                    return response
                return web.Response(status=answer.status, body=payload, headers=passed)

        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._runner.cleanup()
        await self._session.close()
