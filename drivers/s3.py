"""The S3 driver (``s3://bucket/prefix``), over s3fs's async filesystem.

s3fs turns the user's storage options (``endpoint_url``, ``key``, ``secret``,
``client_kwargs``, ``s3_additional_kwargs``, profiles, the AWS environment
variables and credential chain) into one aiobotocore client; this module
sends the few requests the object-store driver needs through that client and
says which failures are worth a retry. S3 cannot append: uploads are stored
as part objects and joined at commit by a multipart upload whose parts are
server-side copies (``UploadPartCopy``) when every part but the last is at
least 5 MiB, and by streaming otherwise (see ``object_store``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

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

MIN_PART = 5 * 1024 * 1024
MAX_PART = 5 * 1024 * 1024 * 1024
MAX_PARTS = 10_000
DELETE_BATCH = 1000
STREAM_PIECE = 1024 * 1024

_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "ConditionalRequestConflict",  # a racing conditional write: the retry gets a clear answer
    "OperationAborted",
}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


def _transient_types() -> tuple[type[BaseException], ...]:
    import aiohttp
    import botocore.exceptions as errors

    kinds: list[type[BaseException]] = [
        errors.HTTPClientError,
        errors.ConnectionError,
        aiohttp.ClientError,
        TimeoutError,
        ConnectionError,
    ]
    for name in ("ResponseStreamingError", "IncompleteReadError"):
        kind = getattr(errors, name, None)
        if kind is not None:
            kinds.append(kind)
    return tuple(kinds)


def parse_timestamp(value: Any) -> datetime.datetime:
    """S3's timestamps as botocore's parser gives them, ISO 8601 ones (every listed key's
    ``LastModified``) 150 times faster: botocore's default goes through dateutil, about
    0.2 ms of CPU each, 0.2 s per 1000-key listing page. Other forms (HTTP dates in
    headers, epoch numbers) go to botocore's own parser."""
    if isinstance(value, str) and value[:4].isdigit():
        with contextlib.suppress(ValueError):
            found = datetime.datetime.fromisoformat(value)
            if found.tzinfo is not None:
                return found
    from botocore.utils import parse_timestamp as botocore_parse

    return botocore_parse(value)


@contextlib.contextmanager
def _translated(transient: tuple[type[BaseException], ...]) -> Iterator[None]:
    from botocore.exceptions import ClientError

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _MISSING_CODES or (
            status == 404 and code != "NoSuchBucket" and "Upload" not in code
        ):
            raise KeyMissing(code or "404") from exc
        if code == "PreconditionFailed" or status == 412:
            raise PreconditionFailed(code) from exc
        if code in _TRANSIENT_CODES or status in (408, 429) or status >= 500:
            raise TransientFault(f"{code or status}: {error.get('Message', '')}") from exc
        raise
    except transient as exc:
        raise TransientFault(f"{type(exc).__name__}: {exc}") from exc


class S3Upload:
    """A multipart upload: parts are uploaded (or copied) and published by ``complete``."""

    size = 0
    exists = False

    def __init__(self, store: S3Store, key: str, upload_id: str) -> None:
        self._store = store
        self._key = key
        self._id = upload_id
        self._etags: dict[int, str] = {}

    async def upload_part(self, number: int, offset: int, data: bytes) -> None:
        self._etags[number] = await self._store._upload_part(self._key, self._id, number, data)

    async def copy_part(self, number: int, source: str, first: int, last: int) -> None:
        """Part *number* is bytes ``[first, last]`` of *source*, copied server-side."""
        self._etags[number] = await self._store._copy_part(
            self._key, self._id, number, source, first, last
        )

    async def complete(self, number: int, offset: int, data: bytes) -> None:
        if data or not self._etags:
            await self.upload_part(number, offset, data)
        parts = [{"PartNumber": n, "ETag": etag} for n, etag in sorted(self._etags.items())]
        await self._store._request(
            "complete_multipart_upload",
            Bucket=self._store.bucket,
            Key=self._key,
            UploadId=self._id,
            MultipartUpload={"Parts": parts},
        )

    async def abort(self) -> None:
        with contextlib.suppress(KeyMissing):
            await self._store._request(
                "abort_multipart_upload",
                Bucket=self._store.bucket,
                Key=self._key,
                UploadId=self._id,
            )


class S3Store(FsspecObjectStore):
    name = "s3"
    min_part_size = MIN_PART
    max_parts_in_flight = 4
    max_copy_size = MAX_PART

    def __init__(self, bucket: str, options: dict[str, Any]) -> None:
        super().__init__(options)
        self.bucket = bucket
        self._transient = _transient_types()

    async def connect(self, loop: asyncio.AbstractEventLoop) -> Any:
        from s3fs import S3FileSystem

        fs = S3FileSystem(asynchronous=True, loop=loop, skip_instance_cache=True, **self.options)
        if fs.session is None:  # the caller gave none: ours parses timestamps quickly
            from aiobotocore.session import AioSession

            fs.session = AioSession(**fs.kwargs)
            parsers = fs.session.get_component("response_parser_factory")
            parsers.set_parser_defaults(timestamp_parser=parse_timestamp)
        await fs.set_session()
        return fs

    async def disconnect(self, fs: Any) -> None:
        creator = getattr(fs, "_s3creator", None)
        if creator is None:
            return
        with contextlib.suppress(Exception):
            if hasattr(creator, "__aexit__"):
                await creator.__aexit__(None, None, None)
            elif hasattr(creator, "clear"):
                await creator.clear()

    async def _request(self, method: str, **kwargs: Any) -> Any:
        """One S3 API call, with the user's extra arguments (``s3_additional_kwargs``...)."""
        fs = await self.filesystem()
        with _translated(self._transient):
            client = await fs.get_s3(self.bucket)
            bound = getattr(client, method)
            with contextlib.suppress(AttributeError):  # an s3fs without the helper
                kwargs = fs._get_s3_method_kwargs(bound, **kwargs)
            return await bound(**kwargs)

    async def head(self, key: str) -> ObjectInfo:
        found = await self._request("head_object", Bucket=self.bucket, Key=key)
        return ObjectInfo(key, int(found["ContentLength"]), found["LastModified"].timestamp())

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        extra: dict[str, Any] = {}
        if start is not None or end is not None:
            first = start or 0
            if end is not None and end <= first:
                return b""
            extra["Range"] = f"bytes={first}-{'' if end is None else end - 1}"
        answer = await self._request("get_object", Bucket=self.bucket, Key=key, **extra)
        with _translated(self._transient):
            async with answer["Body"] as body:
                return bytes(await body.read())

    async def stream(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        if end <= start:
            return
        answer = await self._request(
            "get_object", Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}"
        )
        body = answer["Body"]

        async def read(size: int) -> bytes:
            with _translated(self._transient):
                return bytes(await body.read(size))

        try:
            async for piece in read_pieces(read, STREAM_PIECE):
                yield piece
        finally:
            body.close()

    async def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        extra = {"IfNoneMatch": "*"} if if_absent else {}
        await self._request("put_object", Bucket=self.bucket, Key=key, Body=data, **extra)

    async def list(
        self, prefix: str, *, delimiter: str | None = None, limit: int | None = None
    ) -> tuple[list[ObjectInfo], list[str]]:
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            arguments["Delimiter"] = delimiter
        if limit:
            arguments["MaxKeys"] = limit
        while True:
            page = await self._request("list_objects_v2", **arguments)
            for item in page.get("Contents", ()):
                objects.append(
                    ObjectInfo(item["Key"], int(item["Size"]), item["LastModified"].timestamp())
                )
            prefixes.extend(common["Prefix"] for common in page.get("CommonPrefixes", ()))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token or limit:
                return objects, prefixes
            arguments["ContinuationToken"] = token

    async def copy(self, source: str, destination: str) -> None:
        await self._request(
            "copy_object",
            Bucket=self.bucket,
            Key=destination,
            CopySource={"Bucket": self.bucket, "Key": source},
        )

    async def delete(self, key: str) -> None:
        with contextlib.suppress(KeyMissing):
            await self._request("delete_object", Bucket=self.bucket, Key=key)

    async def delete_many(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            answer = await self._request(
                "delete_objects",
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )
            failed = [e for e in answer.get("Errors", ()) if e.get("Code") != "NoSuchKey"]
            if failed:
                codes = {str(e.get("Code")) for e in failed}
                message = (
                    f"{len(failed)} of {len(batch)} deletes failed: {', '.join(sorted(codes))}"
                )
                if codes & _TRANSIENT_CODES:
                    raise TransientFault(message)
                raise OSError(message)

    async def start_upload(self, key: str) -> S3Upload:
        answer = await self._request("create_multipart_upload", Bucket=self.bucket, Key=key)
        return S3Upload(self, key, answer["UploadId"])

    async def _upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        answer = await self._request(
            "upload_part",
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
        )
        return str(answer["ETag"])

    async def _copy_part(
        self, key: str, upload_id: str, number: int, source: str, first: int, last: int
    ) -> str:
        answer = await self._request(
            "upload_part_copy",
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            CopySource={"Bucket": self.bucket, "Key": source},
            CopySourceRange=f"bytes={first}-{last}",
        )
        return str(answer["CopyPartResult"]["ETag"])

    async def compose(
        self, call: Caller, destination: str, sources: Sequence[ObjectInfo], scratch: str
    ) -> bool:
        """A multipart upload of server-side copies, when S3's part rules allow it."""
        if any(source.size < MIN_PART for source in sources[:-1]):
            return False
        pieces: list[tuple[str, int, int]] = []
        for source in sources:
            count = max(math.ceil(source.size / MAX_PART), 1)
            step = math.ceil(source.size / count)
            for first in range(0, max(source.size, 1), step or 1):
                pieces.append((source.key, first, min(first + step, source.size) - 1))
        if len(pieces) > MAX_PARTS or any(last < first for _, first, last in pieces):
            return False
        upload: S3Upload = await call("start_upload", self.start_upload, destination)
        try:
            await bounded(
                call("upload_part_copy", upload.copy_part, number, key, first, last)
                for number, (key, first, last) in enumerate(pieces, start=1)
            )
            await call("complete", upload.complete, len(pieces) + 1, 0, b"")
        except BaseException:
            with contextlib.suppress(Exception):
                await call("abort", upload.abort)
            raise
        return True

    async def signed_url(self, key: str, expires: int) -> str | None:
        fs = await self.filesystem()
        if getattr(fs, "anon", False):
            return None
        client = await fs.get_s3(self.bucket)
        with _translated(self._transient):
            return str(
                await client.generate_presigned_url(
                    ClientMethod="get_object",
                    Params={"Bucket": self.bucket, "Key": key},
                    ExpiresIn=expires,
                )
            )


def open_s3(
    url: str, *, settings: DriverSettings | None = None, **options: Any
) -> ObjectStoreDriver:
    """Factory for ``s3://bucket/prefix``; *options* go to ``s3fs.S3FileSystem`` unchanged."""
    bucket, prefix = split_url(url, ("s3", "s3a"))
    return ObjectStoreDriver(S3Store(bucket, options), prefix, settings)
