"""Random access into an archive on local disk: the tar's entries, indexed and checked once.

An archive is unpacked (when gzip or zstd compressed) into a temporary file,
then every entry is indexed with its data offset, so manifests, configs and
layers can be read in any order without holding anything in memory. Every
entry is checked here, before anything is read: names must stay inside the
archive (no absolute paths, no ``..``), links must resolve to regular files
inside it without loops, data must not run past the end of the file, and the
tar must end with its end-of-archive marker (a truncated upload does not).
Blocking: callers run this in worker threads.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tarfile
import tempfile
from collections.abc import Iterator
from typing import Final, Literal

import attrs

from .compression import Decompressor, detect
from .errors import ArchiveInvalid, ArchiveTooLarge

CHUNK: Final = 1 << 20
MAX_ENTRIES: Final = 200_000
MAX_LINK_HOPS: Final = 40
MAX_HEADER: Final = 1 << 20
_BLOCK: Final = 512

Kind = Literal["file", "dir", "symlink", "hardlink", "other"]


def _invalid(message: str, entry: str | None = None) -> ArchiveInvalid:
    return ArchiveInvalid(message, detail={"entry": entry} if entry is not None else None)


@attrs.frozen
class Member:
    """One tar entry: where its data is, or where it links to (an archive path)."""

    name: str
    kind: Kind
    offset: int
    size: int
    target: str | None = None


def normalize_name(raw: str, what: str = "entry") -> str:
    """An archive path in canonical form; ArchiveInvalid for absolute paths and ``..``."""
    if raw.startswith("/"):
        raise _invalid(f"{what} {raw!r} has an absolute path", raw)
    parts = []
    for part in raw.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise _invalid(f"{what} {raw!r} has a '..' path component", raw)
        parts.append(part)
    return "/".join(parts)


def _link_target(member: str, linkname: str) -> str:
    """The archive path a symlink in *member* points at; ArchiveInvalid outside the archive."""
    if linkname.startswith("/"):
        raise _invalid(
            f"symlink {member!r} points outside the archive (absolute target {linkname!r})",
            member,
        )
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(member), linkname))
    if joined == ".." or joined.startswith("../") or joined.startswith("/"):
        raise _invalid(f"symlink {member!r} points outside the archive ({linkname!r})", member)
    return "" if joined == "." else joined


class ArchiveFile:
    """An uncompressed tar on local disk with its entries indexed. Close it to clean up."""

    def __init__(
        self, path: str, members: dict[str, Member], owned: bool, compression: str
    ) -> None:
        self.path = path
        self.members = members
        self.compression = compression
        """How the archive as given was compressed: ``none``, ``gzip`` or ``zstd``."""
        self._owned = owned
        self._fd = os.open(path, os.O_RDONLY)

    # -- opening -----------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        max_size: int,
        temp_dir: str | None = None,
        delete_source: bool = False,
    ) -> ArchiveFile:
        """Unpack (when compressed) and index the archive at *path*.

        *delete_source*: *path* is a temporary file of the caller's, removed as
        soon as it is no longer needed (after unpacking, or when this is closed).
        """
        path = os.fspath(path)
        try:
            with open(path, "rb") as fh:
                head = fh.read(8)
            kind = detect(head)
            if kind not in ("none", "gzip", "zstd"):
                raise _invalid(
                    f"the archive is {kind}-compressed; send a tar, or a gzip or zstd "
                    "compressed tar"
                )
            if kind == "none":
                tar_path, owned = path, delete_source
            else:
                tar_path = _unpack(path, kind, max_size, temp_dir)
                owned = True
                if delete_source:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
        except BaseException:
            if delete_source:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            raise
        try:
            members = _index(tar_path)
            return cls(tar_path, members, owned, kind)
        except BaseException:
            if owned:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tar_path)
            raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._owned:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self._owned = False

    def __enter__(self) -> ArchiveFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lookups -----------------------------------------------------------------------

    def has(self, name: str) -> bool:
        return normalize_name(name) in self.members

    def resolve(self, name: str, what: str = "entry") -> Member:
        """The regular file *name* is, or links to; ArchiveInvalid when missing."""
        key = normalize_name(name, what)
        member = self.members.get(key)
        if member is None:
            raise _invalid(f"{what} {name!r} is missing from the archive", name)
        return self._follow(member, what)

    def _follow(self, member: Member, what: str) -> Member:
        return _follow(self.members, member, what)

    # -- reading -----------------------------------------------------------------------

    def read(self, member: Member, limit: int, what: str) -> bytes:
        """A small entry whole (metadata); ArchiveInvalid over *limit* bytes."""
        if member.size > limit:
            raise _invalid(
                f"{what} {member.name!r} is {member.size} bytes; the limit is {limit}", member.name
            )
        return os.pread(self._fd, member.size, member.offset)

    def chunks(self, member: Member, size: int = CHUNK) -> Iterator[bytes]:
        """The entry's data in chunks of up to *size* bytes."""
        position, end = member.offset, member.offset + member.size
        while position < end:
            data = os.pread(self._fd, min(size, end - position), position)
            if not data:
                raise _invalid(f"entry {member.name!r} is truncated", member.name)
            position += len(data)
            yield data

    def head(self, member: Member, size: int = 8) -> bytes:
        return os.pread(self._fd, min(size, member.size), member.offset)


def _unpack(path: str, kind: str, max_size: int, temp_dir: str | None) -> str:
    fd, out_path = tempfile.mkstemp(prefix="cargohold-archive-", suffix=".tar", dir=temp_dir)
    try:
        decompressor = Decompressor(kind, "archive")  # type: ignore[arg-type]
        written = 0
        with open(path, "rb") as src, os.fdopen(fd, "wb") as out:
            while chunk := src.read(CHUNK):
                data = decompressor.feed(chunk)
                written += len(data)
                if written > max_size:
                    raise ArchiveTooLarge(
                        f"the archive unpacks to more than {max_size} bytes (archives.max_size)"
                    )
                out.write(data)
            decompressor.finish()
        return out_path
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out_path)
        raise


def _index(path: str) -> dict[str, Member]:
    file_size = os.path.getsize(path)
    members: dict[str, Member] = {}
    last = "the start"
    try:
        with tarfile.open(path, mode="r:", tarinfo=_BoundedTarInfo) as tar:
            while True:
                info = tar.next()
                if info is None:
                    break
                name = normalize_name(info.name)
                if len(members) >= MAX_ENTRIES:
                    raise _invalid(f"the archive has more than {MAX_ENTRIES} entries")
                if info.offset_data + info.size > file_size:
                    raise _invalid(
                        f"the archive is truncated: entry {info.name!r} needs "
                        f"{info.offset_data + info.size - file_size} more bytes",
                        info.name,
                    )
                last = repr(info.name)
                if not name:
                    continue  # "./": the root itself
                members[name] = _member(info, name)
                # tarfile keeps every TarInfo; forget them, the index is ours.
                tar.members.clear()
            end = tar.offset
    except tarfile.ReadError as exc:
        raise _invalid(f"not a tar archive ({exc})") from None
    except (tarfile.TarError, UnicodeDecodeError) as exc:
        raise _invalid(f"corrupt tar archive after {last} ({exc})") from None
    # tarfile stops silently at a damaged or missing header: the end-of-archive
    # marker (two zero blocks) is what tells a complete tar from a truncated one.
    with open(path, "rb") as fh:
        fh.seek(end)
        marker = fh.read(2 * _BLOCK)
    if len(marker) < 2 * _BLOCK:
        raise _invalid(f"the archive is truncated after {last} (no end-of-archive marker)")
    if marker.strip(b"\0"):
        raise _invalid(f"corrupt tar header after {last} at offset {end}")
    _check_links(members)
    return members


def _follow(members: dict[str, Member], member: Member, what: str) -> Member:
    """The regular file *member* is or links to, following symlinks and hard links."""
    seen = {member.name}
    while member.kind in ("symlink", "hardlink"):
        assert member.target is not None
        following = members.get(member.target)
        if following is None:
            raise _invalid(
                f"{what} {member.name!r} links to {member.target!r}, which is not in the archive",
                member.name,
            )
        if following.name in seen or len(seen) > MAX_LINK_HOPS:
            raise _invalid(f"{what} {member.name!r} is part of a link loop", member.name)
        seen.add(following.name)
        member = following
    if member.kind != "file":
        raise _invalid(f"{what} {member.name!r} is a {member.kind}, not a file", member.name)
    return member


def _check_links(members: dict[str, Member]) -> None:
    """Every link resolves inside the archive: dangling links and loops fail up front."""
    for member in members.values():
        if member.kind in ("symlink", "hardlink"):
            target = members.get(member.target or "")
            if target is not None and target.kind == "dir":
                continue  # a link to a directory is harmless: nothing reads through it
            _follow(members, member, "link")


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads long-name and pax headers into memory whole: bound them first."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _HEADER_TYPES and self.size > MAX_HEADER:
            raise _invalid(
                f"tar extended header before offset {self.offset} is {self.size} bytes; "
                f"the limit is {MAX_HEADER}"
            )
        return super()._proc_member(tarfile_)  # type: ignore[misc]


_HEADER_TYPES: Final = frozenset(
    {
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
    }
)


def _member(info: tarfile.TarInfo, name: str) -> Member:
    if info.isreg():
        return Member(name, "file", info.offset_data, info.size)
    if info.isdir():
        return Member(name, "dir", info.offset_data, 0)
    if info.issym():
        return Member(name, "symlink", 0, 0, _link_target(name, info.linkname))
    if info.islnk():
        target = normalize_name(info.linkname, f"hard link {info.name!r} to")
        if not target:
            raise _invalid(f"hard link {info.name!r} points at the archive root", info.name)
        return Member(name, "hardlink", 0, 0, target)
    return Member(name, "other", info.offset_data, 0)


def copy_to_temp(source: Iterator[bytes], *, max_size: int, temp_dir: str | None) -> str:
    """Spool *source* into a temporary file (ArchiveTooLarge past *max_size*); return its path."""
    fd, path = tempfile.mkstemp(prefix="cargohold-upload-", suffix=".archive", dir=temp_dir)
    try:
        written = 0
        with os.fdopen(fd, "wb") as out:
            for chunk in source:
                written += len(chunk)
                if written > max_size:
                    raise ArchiveTooLarge(
                        f"the archive is over {max_size} bytes (archives.max_size)"
                    )
                out.write(chunk)
        return path
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise


__all__ = ["ArchiveFile", "Member", "copy_to_temp", "normalize_name"]
