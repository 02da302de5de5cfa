"""``cargohold push docker``, ``pull docker``, ``login``, ``logout``: archives over the API.

These commands talk to a running server (``--url``, ``CARGOHOLD_URL``, or the
URL ``cargohold login`` saved) through ``/api/v1/registries/.../archives``.
The API key comes from ``--api-key``, ``CARGOHOLD_API_KEY``, or the
credentials file ``cargohold login`` writes
(``~/.config/cargohold/credentials.toml``, mode 0600), and travels as the
``X-Api-Key`` header. Uploads stream from disk with a progress bar (bytes,
rate, time left) and end with a table of what was stored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import stat
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Final, TextIO
from urllib.parse import urlsplit

DEFAULT_URL: Final = "http://127.0.0.1:5000"
CHUNK: Final = 1 << 20


class CliError(Exception):
    """One clear line for stderr; exit status 1."""


# -- credentials -----------------------------------------------------------------------------


def credentials_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return Path(base) / "cargohold" / "credentials.toml"


def _normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CliError(f"not a server URL: {url!r} (expected http[s]://HOST[:PORT])")
    return url


def read_credentials(path: Path | None = None) -> dict[str, Any]:
    path = path or credentials_path()
    try:
        info = path.stat()
    except FileNotFoundError:
        return {}
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(
            f"cargohold: warning: {path} is readable by others; run chmod 600 {path}",
            file=sys.stderr,
        )
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"{path} is not valid TOML: {exc}") from None


def _toml_string(value: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(value, ensure_ascii=True)


def write_credentials(data: dict[str, Any], path: Path | None = None) -> Path:
    """Write the credentials file with mode 0600 (its folder 0700), atomically."""
    path = path or credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = ["# written by `cargohold login`; keep it private (mode 0600)"]
    if data.get("default_url"):
        lines.append(f"default_url = {_toml_string(data['default_url'])}")
    for url, entry in sorted((data.get("servers") or {}).items()):
        lines.append("")
        lines.append(f"[servers.{_toml_string(url)}]")
        for key, value in sorted(entry.items()):
            lines.append(f"{key} = {_toml_string(str(value))}")
    partial = path.with_suffix(".toml.part")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    os.chmod(partial, 0o600)
    os.replace(partial, path)
    return path


def resolve_server(args: argparse.Namespace) -> tuple[str, str | None]:
    """(URL, API key) from the flags, the environment, then the credentials file."""
    stored = read_credentials()
    url = args.url or os.environ.get("CARGOHOLD_URL") or stored.get("default_url") or DEFAULT_URL
    url = _normalize_url(url)
    key = getattr(args, "api_key", None) or os.environ.get("CARGOHOLD_API_KEY")
    if not key:
        key = ((stored.get("servers") or {}).get(url) or {}).get("api_key")
    return url, key or None


# -- progress ------------------------------------------------------------------------------------


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressBar:
    """Bytes done, rate and time left on stderr: redrawn in place on a terminal,
    a line every few seconds otherwise (logs, CI)."""

    WIDTH: Final = 30

    def __init__(self, label: str, total: int | None, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.done = 0
        self.started = time.monotonic()
        self._drawn = 0.0
        self._interval = 0.1 if self.tty else 2.0

    def update(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self._drawn >= self._interval:
            self._drawn = now
            self._draw(now)

    def _line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-6)
        rate = self.done / elapsed
        text = f"{self.label} "
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            filled = int(fraction * self.WIDTH)
            text += f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction * 100:5.1f}% "
            text += f"{human_bytes(self.done)} / {human_bytes(self.total)}"
        else:
            text += human_bytes(self.done)
        text += f"  {human_bytes(rate)}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f"  ETA {_duration((self.total - self.done) / rate)}"
        else:
            text += f"  {_duration(elapsed)}"
        return text

    def _draw(self, now: float) -> None:
        line = self._line(now)
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        self._draw(time.monotonic())
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def print_table(rows: list[list[str]], header: list[str], stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    widths = [max(len(c) for c in column) for column in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        stream.write("  ".join(cells).rstrip() + "\n")
    stream.flush()


# -- HTTP -------------------------------------------------------------------------------------------


def _headers(key: str | None) -> dict[str, str]:
    return {"X-Api-Key": key} if key else {}


async def _error_of(response: Any) -> CliError:
    text = await response.text()
    try:
        errors = json.loads(text).get("errors") or []
        message = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except (ValueError, AttributeError):
        message = text.strip()[:300]
    hint = ""
    if response.status == 401:
        hint = " (pass --api-key, set CARGOHOLD_API_KEY, or run `cargohold login URL`)"
    return CliError(f"server answered {response.status}: {message or response.reason}{hint}")


def _split_tenant(text: str) -> str:
    parts = text.split("/")
    if len(parts) != 2 or not all(parts):
        raise CliError(f"expected OWNER/REGISTRY, not {text!r}")
    return text


async def _push(args: argparse.Namespace) -> int:
    import aiohttp

    tenant = _split_tenant(args.tenant)
    url, key = resolve_server(args)
    path = Path(args.archive)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    params: list[tuple[str, str]] = [("tag", tag) for tag in args.tag or []]
    if args.compression:
        params.append(("compression", args.compression))
    bar = ProgressBar(f"uploading {path.name}", size)

    async def body() -> Any:
        with open(path, "rb") as handle:
            while chunk := await asyncio.to_thread(handle.read, CHUNK):
                bar.update(len(chunk))
                yield chunk
        bar.finish()
        print("uploaded; the server is verifying and storing the image(s)", file=sys.stderr)

    endpoint = f"{url}/api/v1/registries/{tenant}/archives"
    headers = _headers(key) | {
        "Content-Type": "application/x-tar",
        "Content-Length": str(size),
    }
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        try:
            async with session.post(
                endpoint, data=body(), params=params, headers=headers, expect100=True
            ) as resp:
                if resp.status != 201:
                    raise await _error_of(resp)
                result = await resp.json()
        except aiohttp.ClientError as exc:
            raise CliError(f"upload to {url} failed: {exc}") from None
    elapsed = time.monotonic() - started
    rows = []
    for image in result["images"]:
        rows.append(
            [
                image["repository"],
                ",".join(image["tags"]),
                image["digest"],
                ",".join(image["platforms"]) or "-",
                str(image["layers"]),
                human_bytes(image["size"]),
                "as archived" if image["verbatim"] else "recompressed",
            ]
        )
    print_table(rows, ["REPOSITORY", "TAGS", "DIGEST", "PLATFORM", "LAYERS", "SIZE", "STORED"])
    print(
        f"{len(result['images'])} image(s) from {path.name} ({human_bytes(size)}) in "
        f"{elapsed:.1f} s ({human_bytes(size / max(elapsed, 1e-6))}/s): "
        f"{result['blobs_stored']} blob(s) stored ({human_bytes(result['bytes_stored'])}), "
        f"{result['blobs_existing']} already present"
    )
    return 0


async def _pull(args: argparse.Namespace) -> int:
    import aiohttp

    url, key = resolve_server(args)
    owner, _, rest = args.image.partition("/")
    registry, _, image = rest.partition("/")
    if not (owner and registry and image):
        raise CliError(f"expected OWNER/REGISTRY/IMAGE[:TAG], not {args.image!r}")
    reference = image
    bare = image.partition("@")[0]
    if ":" not in bare.rsplit("/", 1)[-1] and "@" not in image:
        reference = f"{image}:latest"
    out = Path(args.output)
    host = urlsplit(url).netloc
    params = {"image": reference}
    if "@" not in reference:
        params["repo_tag"] = f"{host}/{owner}/{registry}/{reference}"
    if args.platform:
        params["platform"] = args.platform
    endpoint = f"{url}/api/v1/registries/{owner}/{registry}/archives"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    partial = out.with_name(out.name + ".part")
    bar = ProgressBar(f"downloading {args.image}", None)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        try:
            async with session.get(endpoint, params=params, headers=_headers(key)) as resp:
                if resp.status != 200:
                    raise await _error_of(resp)
                with open(partial, "wb") as handle:
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        await asyncio.to_thread(handle.write, chunk)
                        bar.update(len(chunk))
                digest = resp.headers.get("Docker-Content-Digest", "")
                config = resp.headers.get("X-Cargohold-Config-Digest", "")
                platform = resp.headers.get("X-Cargohold-Platform", "")
        except aiohttp.ClientError as exc:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
            raise CliError(f"download from {url} failed: {exc}") from None
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
            raise
    bar.finish()
    os.replace(partial, out)
    print_table(
        [[str(out), reference, platform, digest, config, human_bytes(out.stat().st_size)]],
        ["FILE", "IMAGE", "PLATFORM", "MANIFEST", "CONFIG", "SIZE"],
    )
    return 0


def _login(args: argparse.Namespace) -> int:
    url = _normalize_url(args.url)
    if args.api_key_stdin:
        key = sys.stdin.readline().strip()
    elif sys.stdin.isatty():
        key = getpass.getpass(f"API key for {url}: ").strip()
    else:
        raise CliError(
            "no terminal to prompt on: pass the key on standard input with --api-key-stdin"
        )
    if not key:
        raise CliError("no API key given")
    data = read_credentials()
    data.setdefault("servers", {})[url] = {"api_key": key}
    data["default_url"] = url
    path = write_credentials(data)
    print(f"saved the API key for {url} in {path}")
    return 0


def _logout(args: argparse.Namespace) -> int:
    stored = read_credentials()
    url = _normalize_url(args.url or stored.get("default_url") or DEFAULT_URL)
    servers = stored.get("servers") or {}
    if servers.pop(url, None) is None:
        print(f"no API key saved for {url}")
        return 0
    if stored.get("default_url") == url:
        stored.pop("default_url")
    write_credentials(stored)
    print(f"removed the API key for {url}")
    return 0


def _run(func: Any) -> Any:
    def command(args: argparse.Namespace) -> int:
        try:
            result = func(args)
            if asyncio.iscoroutine(result):
                result = asyncio.run(result)
            return int(result)
        except CliError as exc:
            print(f"cargohold: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("cargohold: interrupted", file=sys.stderr)
            return 130

    return command


def add_archive_commands(commands: Any) -> None:
    """Register ``push``, ``pull``, ``login`` and ``logout`` on the ``cargohold`` parser."""
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument(
        "--url", help=f"server URL (default: CARGOHOLD_URL, login's, {DEFAULT_URL})"
    )
    server.add_argument(
        "--api-key",
        help="API key (default: CARGOHOLD_API_KEY, then the key `cargohold login` saved)",
    )

    push = commands.add_parser("push", help="upload images to a running server")
    push_kinds = push.add_subparsers(dest="kind", required=True)
    push_docker = push_kinds.add_parser(
        "docker",
        parents=[server],
        help="upload a `docker save` tarball or an OCI layout archive (tar, gzip, zstd)",
    )
    push_docker.add_argument("tenant", metavar="OWNER/REGISTRY")
    push_docker.add_argument("archive", metavar="IMAGE.docker")
    push_docker.add_argument(
        "--tag",
        action="append",
        metavar="NAME[:TAG]",
        help="name the image (replaces the archive's names; repeat for more tags)",
    )
    push_docker.add_argument(
        "--compression",
        choices=["gzip", "zstd"],
        help="how to compress layers that arrive uncompressed (default: the server's)",
    )
    push_docker.set_defaults(func=_run(_push))

    pull = commands.add_parser("pull", help="download images from a running server")
    pull_kinds = pull.add_subparsers(dest="kind", required=True)
    pull_docker = pull_kinds.add_parser(
        "docker", parents=[server], help="download an image as a `docker save` tarball"
    )
    pull_docker.add_argument("image", metavar="OWNER/REGISTRY/IMAGE[:TAG|@DIGEST]")
    pull_docker.add_argument("-o", "--output", required=True, metavar="FILE")
    pull_docker.add_argument(
        "--platform", metavar="OS/ARCH[/VARIANT]", help="from a multi-platform image"
    )
    pull_docker.set_defaults(func=_run(_pull))

    login = commands.add_parser("login", help="save an API key for a server")
    login.add_argument("url", metavar="URL")
    login.add_argument(
        "--api-key-stdin", action="store_true", help="read the key from standard input"
    )
    login.set_defaults(func=_run(_login))

    logout = commands.add_parser("logout", help="forget the API key saved for a server")
    logout.add_argument("url", metavar="URL", nargs="?")
    logout.set_defaults(func=_run(_logout))
