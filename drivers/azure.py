"""The Azure Blob Storage driver (``az://container/prefix``), over adlfs's async filesystem.

adlfs turns the user's storage options (``connection_string``, ``account_name``,
``account_key``, ``sas_token``, ``credential``, service principals, the
``AZURE_STORAGE_*`` variables) into one async ``BlobServiceClient``; this
module sends the requests the object-store driver needs through that client.

Azure can append: a block blob is whatever block list was committed last, so
an append stages new blocks on the upload's own blob and commits the old list
plus the new blocks (no part objects, no join at commit: a finished upload is
moved with one server-side copy). Create-if-absent is ``If-None-Match: *``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from registry_core.storage.driver import DriverSettings

from .object_store import (
    READ_RANGE,
    FsspecObjectStore,
    KeyMissing,
    ObjectInfo,
    ObjectStoreDriver,
    PreconditionFailed,
    TransientFault,
    split_url,
)

MTIME_KEY = "cargohold_mtime"
"""Blob metadata holding the time of the last append, finer than Last-Modified's seconds."""
BLOCK_ID_LENGTH = 40
COPY_POLL = 0.2


def _mtime(properties: Any) -> float:
    stamp = (getattr(properties, "metadata", None) or {}).get(MTIME_KEY)
    if stamp:
        with contextlib.suppress(ValueError):
            return float(stamp)
    modified = getattr(properties, "last_modified", None)
    return modified.timestamp() if modified is not None else 0.0


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    import aiohttp
    from azure.core.exceptions import (
        HttpResponseError,
        ResourceExistsError,
        ResourceModifiedError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    try:
        yield
    except ResourceNotFoundError as exc:
        if getattr(exc, "error_code", None) == "ContainerNotFound":
            raise OSError(f"container not found: {exc.message}") from exc
        raise KeyMissing(str(getattr(exc, "error_code", "") or "404")) from exc
    except (ResourceExistsError, ResourceModifiedError) as exc:
        raise PreconditionFailed(str(getattr(exc, "error_code", "") or exc.status_code)) from exc
    except HttpResponseError as exc:
        status = exc.status_code or 0
        if status in (408, 429) or status >= 500:
            raise TransientFault(f"HTTP {status}: {exc.error_code or exc.reason}") from exc
        raise
    except (ServiceRequestError, ServiceResponseError, aiohttp.ClientError, ConnectionError) as exc:
        raise TransientFault(f"{type(exc).__name__}: {exc}") from exc


class AzureBlockUpload:
    """Blocks staged on one blob, published by committing the block list.

    For an append, the list committed is the blob's existing blocks followed by
    the new ones; for a plain write, the new blocks alone (replacing the blob).
    """

    def __init__(
        self,
        store: AzureStore,
        key: str,
        committed: Sequence[str] = (),
        size: int = 0,
        *,
        appends_to: str | None = None,
    ) -> None:
        self._store = store
        self._key = key
        # An append commits only over the blob it read: its ETag then (or "*" when there
        # was none: the blob must still be missing). Two appends racing from one size
        # would otherwise both succeed, the later list dropping the other's blocks: bytes
        # replaced under a hash state kept for them.
        self._appends_to = appends_to
        self._committed = list(committed)
        self.size = size
        self.exists = bool(committed) or size > 0
        length = len(self._committed[0]) if self._committed else BLOCK_ID_LENGTH
        self._prefix = secrets.token_hex(length)[: length - 8]
        self._staged: dict[int, str] = {}

    def _block_id(self, number: int) -> str:
        return f"{self._prefix}{number:08d}"

    async def upload_part(self, number: int, offset: int, data: bytes) -> None:
        block = self._block_id(number)
        with _translated():
            await self._store._blob(self._key).stage_block(block, data, length=len(data))
        self._staged[number] = block

    async def complete(self, number: int, offset: int, data: bytes) -> None:
        from azure.storage.blob import BlobBlock, BlockState

        if data:
            await self.upload_part(number, offset, data)
        blocks = [BlobBlock(block, BlockState.COMMITTED) for block in self._committed]
        blocks += [
            BlobBlock(block, BlockState.UNCOMMITTED) for _, block in sorted(self._staged.items())
        ]
        conditions: dict[str, Any] = {}
        if self._appends_to is not None:
            from azure.core import MatchConditions

            if self._appends_to == "*":
                conditions["match_condition"] = MatchConditions.IfMissing
            else:
                conditions["etag"] = self._appends_to
                conditions["match_condition"] = MatchConditions.IfNotModified
        with _translated():
            await self._store._blob(self._key).commit_block_list(
                blocks, metadata={MTIME_KEY: f"{time.time():.6f}"}, **conditions
            )

    async def abort(self) -> None:
        """Nothing to do: the service drops uncommitted blocks by itself."""


class AzureStore(FsspecObjectStore):
    name = "azure"
    native_append = True
    max_parts_in_flight = 4

    def __init__(self, container: str, options: dict[str, Any]) -> None:
        super().__init__(options)
        self.container = container

    async def connect(self, loop: asyncio.AbstractEventLoop) -> Any:
        from adlfs import AzureBlobFileSystem

        fs = AzureBlobFileSystem(
            asynchronous=True, loop=loop, skip_instance_cache=True, **self.options
        )
        _detach_exit_hooks(fs)
        return fs

    async def disconnect(self, fs: Any) -> None:
        with contextlib.suppress(Exception):
            await fs.service_client.close()
        credential = getattr(fs, "credential", None)
        if credential is not None and hasattr(credential, "close"):
            with contextlib.suppress(Exception):
                await credential.close()

    def _container(self) -> Any:
        assert self._fs is not None
        return self._fs.service_client.get_container_client(self.container)

    def _blob(self, key: str) -> Any:
        return self._container().get_blob_client(key)

    # -- the store ----------------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo:
        await self.filesystem()
        with _translated():
            properties = await self._blob(key).get_blob_properties()
        return ObjectInfo(key, int(properties.size), _mtime(properties))

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        await self.filesystem()
        extra: dict[str, Any] = {}
        if start is not None or end is not None:
            first = start or 0
            if end is not None and end <= first:
                return b""
            extra = {"offset": first, "length": None if end is None else end - first}
        with _translated():
            stream = await self._blob(key).download_blob(max_concurrency=1, **extra)
            return bytes(await stream.readall())

    async def stream(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        if end <= start:
            return
        await self.filesystem()
        with _translated():
            downloader = await self._blob(key).download_blob(
                offset=start, length=end - start, max_concurrency=1
            )
        pieces = downloader.chunks()
        while True:
            with _translated():
                piece = await anext(pieces, None)
            if piece is None:
                return
            yield piece

    async def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        await self.filesystem()
        with _translated():
            await self._blob(key).upload_blob(
                data, overwrite=not if_absent, length=len(data), blob_type="BlockBlob"
            )

    async def list(
        self, prefix: str, *, delimiter: str | None = None, limit: int | None = None
    ) -> tuple[list[ObjectInfo], list[str]]:
        await self.filesystem()
        container = self._container()
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        with _translated():
            if delimiter:
                listing = container.walk_blobs(
                    name_starts_with=prefix, include=["metadata"], delimiter=delimiter
                )
            else:
                listing = container.list_blobs(name_starts_with=prefix, include=["metadata"])
            async for item in listing:
                if hasattr(item, "size") and getattr(item, "size", None) is not None:
                    objects.append(ObjectInfo(item.name, int(item.size), _mtime(item)))
                else:
                    prefixes.append(item.name if item.name.endswith("/") else item.name + "/")
                if limit and len(objects) + len(prefixes) >= limit:
                    break
        return objects, prefixes

    async def copy(self, source: str, destination: str) -> None:
        await self.filesystem()
        target = self._blob(destination)
        with _translated():
            started = await target.start_copy_from_url(self._blob(source).url)
            status = started.get("copy_status")
            while status == "pending":
                await asyncio.sleep(COPY_POLL)
                status = (await target.get_blob_properties()).copy.status
        if status not in ("success", None):
            raise OSError(f"copy of {source} to {destination} ended {status}")

    async def delete(self, key: str) -> None:
        await self.filesystem()
        with contextlib.suppress(KeyMissing), _translated():
            await self._blob(key).delete_blob(delete_snapshots="include")

    async def start_upload(self, key: str) -> AzureBlockUpload:
        await self.filesystem()
        return AzureBlockUpload(self, key)

    async def start_append(self, key: str) -> AzureBlockUpload:
        await self.filesystem()
        blob = self._blob(key)
        try:
            with _translated():
                properties = await blob.get_blob_properties()
        except KeyMissing:
            return AzureBlockUpload(self, key, appends_to="*")
        with _translated():
            committed, _ = await blob.get_block_list("committed")
        ids = [block.id for block in committed]
        if sum(block.size for block in committed) != properties.size:
            # Written in one Put Blob (no block list): restage its bytes as blocks.
            ids = await self._restage(key, int(properties.size))
        return AzureBlockUpload(
            self, key, ids, int(properties.size), appends_to=str(properties.etag)
        )

    async def _restage(self, key: str, size: int) -> list[str]:
        staging = AzureBlockUpload(self, key)
        for number, first in enumerate(range(0, size, READ_RANGE), start=1):
            data = await self.get(key, first, min(first + READ_RANGE, size))
            await staging.upload_part(number, first, data)
        return [block for _, block in sorted(staging._staged.items())]

    async def signed_url(self, key: str, expires: int) -> str | None:
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        fs = await self.filesystem()
        account, secret = _account_key(fs)
        if not account or not secret:
            return None  # a SAS token or AAD credential cannot sign a new SAS here
        token = generate_blob_sas(
            account_name=account,
            container_name=self.container,
            blob_name=key,
            account_key=secret,
            permission=BlobSasPermissions(read=True),
            expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=expires),
        )
        return f"{self._blob(key).url}?{token}"


def _detach_exit_hooks(fs: Any) -> None:
    """Drop adlfs's at-exit closers of *fs*: ``disconnect`` closes it on its own loop,
    while theirs would run after that loop is gone and print a traceback."""
    registry = getattr(weakref.finalize, "_registry", {})
    for finalizer, info in list(registry.items()):
        if any(argument is fs for argument in getattr(info, "args", ())):
            finalizer.detach()


def _account_key(fs: Any) -> tuple[str | None, str | None]:
    if fs.connection_string:
        fields = dict(part.split("=", 1) for part in fs.connection_string.split(";") if "=" in part)
        lowered = {name.lower(): value for name, value in fields.items()}
        return lowered.get("accountname"), lowered.get("accountkey")
    return fs.account_name, fs.account_key


def open_azure(
    url: str, *, settings: DriverSettings | None = None, **options: Any
) -> ObjectStoreDriver:
    """Factory for ``az://container/prefix``; *options* go to ``adlfs.AzureBlobFileSystem`` unchanged."""
    container, prefix = split_url(url, ("az", "abfs", "abfss"))
    return ObjectStoreDriver(AzureStore(container, options), prefix, settings)
