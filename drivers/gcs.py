"""The Google Cloud Storage driver (``gs://bucket/prefix``), over gcsfs's async filesystem.

gcsfs turns the user's storage options (``token``, ``project``,
``endpoint_url``, ``requester_pays``, ``session_kwargs``, ``STORAGE_EMULATOR_HOST``,
the default credential chain) into one aiohttp session with credentials; this
module sends the JSON API requests the object-store driver needs through that
session (not through gcsfs's own retry loop, so retries and timeouts are the
driver's). Create-if-absent is ``ifGenerationMatch=0``; streamed writes are
resumable uploads; uploads stored as parts are joined with ``compose``, at most
32 sources per request, in rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, NoReturn
from urllib.parse import quote

from registry_core.storage.driver import DriverSettings

from .object_store import (
    Caller,
    FsspecObjectStore,
    KeyMissing,
    ObjectInfo,
    ObjectStoreDriver,
    PreconditionFailed,
    TransientFault,
    bounded,
    read_pieces,
    split_url,
)

CHUNK_ALIGNMENT = 256 * 1024
"""Every chunk of a resumable upload but the last is a multiple of this."""
COMPOSE_SOURCES = 32
COMPOSE_COMPONENTS = 1024
"""A composite object holds at most this many original objects."""
LIST_PAGE = 1000
STREAM_PIECE = 1024 * 1024
EMPTY_BOUNDARY = "cargohold-empty-object"
EMPTY_MULTIPART = (
    f"--{EMPTY_BOUNDARY}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{{}}\r\n"
    f"--{EMPTY_BOUNDARY}\r\nContent-Type: application/octet-stream\r\n\r\n\r\n"
    f"--{EMPTY_BOUNDARY}--\r\n"
).encode()


def _timestamp(text: str | None) -> float:
    if not text:
        return 0.0
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class GcsUpload:
    """A resumable upload: chunks in order, the last one declares the total size."""

    size = 0
    exists = False

    def __init__(self, store: GcsStore, key: str, session_url: str) -> None:
        self._store = store
        self._key = key
        self._url = session_url

    async def _send(self, offset: int, data: bytes, total: int | None) -> None:
        view = memoryview(data)
        while True:
            if view:
                span = f"bytes {offset}-{offset + len(view) - 1}/{'*' if total is None else total}"
            else:
                span = f"bytes */{total}"
            status, headers, _ = await self._store._request(
                "PUT", self._url, headers={"Content-Range": span}, data=bytes(view), accept=(308,)
            )
            if status != 308:
                return
            if total is not None and not view:
                raise TransientFault("the final chunk was not accepted yet")
            stored = headers.get("Range")  # "bytes=0-N": what the server has persisted
            persisted = int(stored.rsplit("-", 1)[1]) + 1 if stored else 0
            sent_to = offset + len(view)
            if persisted >= sent_to:
                if total is None:
                    return
                raise TransientFault("the final chunk was not accepted yet")
            if persisted < offset:
                raise TransientFault(f"resumable upload lost bytes {persisted}..{offset}")
            view = view[persisted - offset :]
            offset = persisted

    async def upload_part(self, number: int, offset: int, data: bytes) -> None:
        await self._send(offset, data, None)

    async def complete(self, number: int, offset: int, data: bytes) -> None:
        await self._send(offset, data, offset + len(data))

    async def abort(self) -> None:
        with contextlib.suppress(KeyMissing, OSError):
            await self._store._request("DELETE", self._url, accept=(499,))


class GcsStore(FsspecObjectStore):
    name = "gcs"
    min_part_size = CHUNK_ALIGNMENT
    part_alignment = CHUNK_ALIGNMENT
    max_parts_in_flight = 1  # a resumable upload takes its chunks in order

    def __init__(self, bucket: str, options: dict[str, Any]) -> None:
        super().__init__(options)
        self.bucket = bucket
        self._signer: Any = None

    async def connect(self, loop: asyncio.AbstractEventLoop) -> Any:
        # The core class: gcsfs's default export may be the experimental one,
        # which probes every bucket over gRPC first.
        from gcsfs.core import GCSFileSystem

        fs = GCSFileSystem(asynchronous=True, loop=loop, skip_instance_cache=True, **self.options)
        await fs._set_session()
        return fs

    async def disconnect(self, fs: Any) -> None:
        session = getattr(fs, "_session", None)
        if session is not None and not session.closed:
            await session.close()

    # -- requests ---------------------------------------------------------------------

    def _object_url(self, fs: Any, key: str, suffix: str = "") -> str:
        return f"{fs._location}/storage/v1/b/{quote(self.bucket, safe='')}/o/{quote(key, safe='')}{suffix}"

    async def _request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        json: Any = None,
        accept: tuple[int, ...] = (),
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One HTTP request with the filesystem's session and credentials; errors translated."""
        import aiohttp

        fs = await self.filesystem()
        await self._refresh(fs)
        try:
            async with fs.session.request(
                method,
                url,
                params=fs._get_params(dict(params or {})),
                headers=fs._get_headers(dict(headers or {})),
                data=data,
                json=json,
            ) as response:
                body = await response.read()
                status, answer = response.status, response.headers
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            raise TransientFault(f"{type(exc).__name__}: {exc}") from exc
        if status < 300 or status in accept:
            return status, answer, body
        self._raise_for(status, body, method)

    @staticmethod
    async def _refresh(fs: Any) -> None:
        credentials = fs.credentials
        valid = getattr(credentials, "_credentials_valid", None)
        if credentials.credentials is not None and (valid is None or not valid(300)):
            # google-auth refreshes with blocking I/O: keep it off the event loop.
            await asyncio.to_thread(credentials.maybe_refresh)

    @staticmethod
    def _raise_for(status: int, body: bytes, method: str) -> NoReturn:
        message = body[:300].decode("utf-8", "replace")
        if status == 404:
            raise KeyMissing(message)
        if status == 412:
            raise PreconditionFailed(message)
        if status in (408, 429) or status >= 500:
            raise TransientFault(f"HTTP {status}: {message}")
        raise OSError(f"GCS {method} answered {status}: {message}")

    async def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        import json

        _, _, body = await self._request(method, url, **kwargs)
        return json.loads(body) if body else {}

    # -- the store ----------------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo:
        fs = await self.filesystem()
        found = await self._json(
            "GET", self._object_url(fs, key), params={"fields": "size,updated"}
        )
        return ObjectInfo(key, int(found.get("size", 0)), _timestamp(found.get("updated")))

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        fs = await self.filesystem()
        headers = {}
        if start is not None or end is not None:
            first = start or 0
            if end is not None and end <= first:
                return b""
            headers["Range"] = f"bytes={first}-{'' if end is None else end - 1}"
        _, _, body = await self._request(
            "GET", self._object_url(fs, key), params={"alt": "media"}, headers=headers
        )
        return body

    async def stream(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        import aiohttp

        if end <= start:
            return
        fs = await self.filesystem()
        await self._refresh(fs)
        try:
            async with fs.session.get(
                self._object_url(fs, key),
                params=fs._get_params({"alt": "media"}),
                headers=fs._get_headers({"Range": f"bytes={start}-{end - 1}"}),
            ) as response:
                if response.status >= 300:
                    self._raise_for(response.status, await response.read(), "GET")
                async for piece in read_pieces(response.content.read, STREAM_PIECE):
                    yield piece
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            raise TransientFault(f"{type(exc).__name__}: {exc}") from exc

    async def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        fs = await self.filesystem()
        params: dict[str, Any] = {"uploadType": "media", "name": key}
        if if_absent:
            params["ifGenerationMatch"] = "0"
        content_type = "application/octet-stream"
        if not data:
            # An empty object as a multipart upload: gcp-storage-emulator fails an
            # empty media upload, and the real service takes either.
            params["uploadType"] = "multipart"
            content_type = f'multipart/related; boundary="{EMPTY_BOUNDARY}"'
            data = EMPTY_MULTIPART
        await self._request(
            "POST",
            f"{fs._location}/upload/storage/v1/b/{quote(self.bucket, safe='')}/o",
            params=params,
            headers={"Content-Type": content_type},
            data=data,
        )

    async def list(
        self, prefix: str, *, delimiter: str | None = None, limit: int | None = None
    ) -> tuple[list[ObjectInfo], list[str]]:
        fs = await self.filesystem()
        url = f"{fs._location}/storage/v1/b/{quote(self.bucket, safe='')}/o"
        params: dict[str, Any] = {
            "prefix": prefix,
            "maxResults": limit or LIST_PAGE,
            "fields": "items(name,size,updated),prefixes,nextPageToken",
        }
        if delimiter:
            params["delimiter"] = delimiter
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        while True:
            page = await self._json("GET", url, params=params)
            for item in page.get("items") or ():
                objects.append(
                    ObjectInfo(
                        item["name"], int(item.get("size", 0)), _timestamp(item.get("updated"))
                    )
                )
            prefixes.extend(page.get("prefixes") or ())
            token = page.get("nextPageToken")
            if not token or limit:
                return objects, prefixes
            params["pageToken"] = token

    async def copy(self, source: str, destination: str) -> None:
        fs = await self.filesystem()
        bucket = quote(self.bucket, safe="")
        url = self._object_url(fs, source, f"/rewriteTo/b/{bucket}/o/{quote(destination, safe='')}")
        params: dict[str, Any] = {}
        while True:
            answer = await self._json("POST", url, params=params, json={})
            if answer.get("done", True):
                return
            params["rewriteToken"] = answer["rewriteToken"]

    async def delete(self, key: str) -> None:
        fs = await self.filesystem()
        with contextlib.suppress(KeyMissing):
            await self._request("DELETE", self._object_url(fs, key))

    async def start_upload(self, key: str) -> GcsUpload:
        fs = await self.filesystem()
        _, headers, _ = await self._request(
            "POST",
            f"{fs._location}/upload/storage/v1/b/{quote(self.bucket, safe='')}/o",
            params={"uploadType": "resumable", "name": key},
            headers={"X-Upload-Content-Type": "application/octet-stream"},
            json={"name": key, "contentType": "application/octet-stream"},
        )
        location = headers.get("Location")
        if not location:
            raise OSError("GCS started a resumable upload without a Location")
        return GcsUpload(self, key, location)

    async def _compose(self, destination: str, sources: Sequence[str]) -> None:
        fs = await self.filesystem()
        await self._request(
            "POST",
            self._object_url(fs, destination, "/compose"),
            json={
                "sourceObjects": [{"name": name} for name in sources],
                "destination": {"contentType": "application/octet-stream"},
            },
        )

    async def compose(
        self, call: Caller, destination: str, sources: Sequence[ObjectInfo], scratch: str
    ) -> bool:
        """Compose in rounds of at most 32 sources; intermediate objects live under *scratch*."""
        if len(sources) > COMPOSE_COMPONENTS:
            return False
        level = [source.key for source in sources]
        temporary: list[str] = []
        token = secrets.token_hex(4)
        try:
            round_number = 0
            while len(level) > COMPOSE_SOURCES:
                groups = [
                    level[i : i + COMPOSE_SOURCES] for i in range(0, len(level), COMPOSE_SOURCES)
                ]
                names = [
                    group[0] if len(group) == 1 else f"{scratch}join-{token}-{round_number}-{n:05d}"
                    for n, group in enumerate(groups)
                ]
                temporary += [
                    name for name, group in zip(names, groups, strict=True) if len(group) > 1
                ]
                await bounded(
                    call("compose", self._compose, name, group)
                    for name, group in zip(names, groups, strict=True)
                    if len(group) > 1
                )
                level = names
                round_number += 1
            await call("compose", self._compose, destination, level)
        finally:
            if temporary:
                with contextlib.suppress(Exception):
                    await call("delete_many", self.delete_many, temporary)
        return True

    async def signed_url(self, key: str, expires: int) -> str | None:
        fs = await self.filesystem()
        credentials = fs.credentials.credentials
        if credentials is None or not hasattr(credentials, "sign_bytes"):
            return None  # anonymous or user credentials: nothing to sign with
        if not getattr(credentials, "signer_email", None):
            return None

        def sign() -> str:
            # In a thread: RSA signing costs CPU, and credentials without a key of
            # their own (GCE) sign through the IAM API with blocking requests.
            if self._signer is None:
                from google.cloud import storage

                client = storage.Client(
                    project=fs.project or "cargohold",
                    credentials=credentials,
                    client_options={"api_endpoint": fs._location},
                )
                self._signer = client.bucket(self.bucket)
            return str(
                self._signer.blob(key).generate_signed_url(
                    version="v4",
                    expiration=datetime.timedelta(seconds=expires),
                    api_access_endpoint=fs._location,
                    method="GET",
                )
            )

        return await asyncio.to_thread(sign)


def open_gcs(
    url: str, *, settings: DriverSettings | None = None, **options: Any
) -> ObjectStoreDriver:
    """Factory for ``gs://bucket/prefix``; *options* go to ``gcsfs.GCSFileSystem`` unchanged."""
    bucket, prefix = split_url(url, ("gs", "gcs"))
    return ObjectStoreDriver(GcsStore(bucket, options), prefix, settings)
