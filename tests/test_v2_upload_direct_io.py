"""Upload bodies received off the socket and written with ``O_DIRECT`` (drivers/local.py),
over real HTTP on loopback, against a server on a disk folder, on tmpfs and switched off.

Sizes that are and are not whole blocks, and a first PATCH of odd length before large
ones (so the body must be realigned before any block can go direct): every blob reads
back exactly. ``/metrics`` tells whether the direct path wrote blocks with ``O_DIRECT``
(on the disk), or not (switched off; tmpfs, which refuses it before Linux 6.6 and takes
it into its page cache since).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.local import STAGED_MIN
from registry_server.http import bodies
from tests.helpers import unique_repo_name
from tests.helpers.direct_io import takes_direct_io
from tests.helpers.server import RegistryServer
from tests.helpers.tenants import http, write_config
from tests.test_v2_upload_direct import Connection, digest_of, fetch, head, with_digest

MiB = 1 << 20
SHM = Path("/dev/shm")


@pytest.fixture(scope="module", params=["disk", "tmpfs", "off"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RegistryServer, str]]:
    kind = request.param
    tmp = tmp_path_factory.mktemp(f"direct-io-{kind}")
    if kind == "tmpfs":
        assert SHM.is_dir(), "no tmpfs at /dev/shm"
        store = SHM / f"cargohold-direct-io-{os.getpid()}-{tmp.name}"
        expect = "direct" if takes_direct_io(SHM) else "refused"
    else:
        store = tmp / "store"
        if kind == "disk":
            assert takes_direct_io(tmp), f"{tmp} is on a file system without O_DIRECT"
        expect = "direct" if kind == "disk" else "off"
    store.mkdir()
    registry = RegistryServer(
        f"file://{store}",
        config=write_config(tmp / "server.toml"),
        workdir=Path(tmp),
        env={"CARGOHOLD_DIRECT_IO": "0" if kind == "off" else "1"},
    )
    registry.start()
    try:
        yield registry, expect
    finally:
        registry.stop()
        if kind == "tmpfs":
            shutil.rmtree(store, ignore_errors=True)
            # The server keeps its state (the secrets key) beside a local store.
            shutil.rmtree(store.parent / f"{store.name}-state", ignore_errors=True)


def direct_io(server: RegistryServer) -> tuple[float, float, float]:
    """(bodies received directly, bytes written with O_DIRECT, refusals), from /metrics."""
    with http() as session:
        text = session.get(f"{server.url}/metrics", timeout=10).text

    def value(name: str) -> float:
        found = re.search(rf"^{name} (\S+)$", text, re.M)
        assert found, f"{name} missing from /metrics"
        return float(found[1])

    return (
        value("cargohold_upload_bodies_direct_total"),
        value("cargohold_upload_direct_io_bytes_total"),
        value("cargohold_upload_direct_io_refusals_total"),
    )


def check_direct_io(
    expect: str, before: tuple[float, ...], after: tuple[float, ...], bodies: int, size: int
) -> None:
    """*bodies* bodies of *size* bytes in all took the direct receiving path; whether their
    blocks went with O_DIRECT depends on the store."""
    assert after[0] - before[0] == bodies
    written, refused = after[1] - before[1], after[2] - before[2]
    if expect == "direct":
        # All but what aiohttp held of each body when the thread took over (a few hundred
        # KiB: written buffered), the realigning head (< 4 KiB) and the tail (< 4 KiB).
        assert size - bodies * MiB <= written <= size and written % 4096 == 0
        assert refused == 0
    elif expect == "refused":
        assert (written, refused) == (0, bodies)
    else:
        assert (written, refused) == (0, 0)


@pytest.mark.parametrize(
    "size",
    [8 * MiB, 6 * MiB + 12345, bodies.LARGE_BODY + 3 * MiB + 12345],
    ids=["blocks", "odd", "large-buffers"],
)
def test_a_monolithic_upload_reads_back_exactly(
    server: tuple[RegistryServer, str], size: int
) -> None:
    registry, expect = server
    blob = os.urandom(size)
    before = direct_io(registry)
    with Connection(registry) as conn:
        conn.send("POST", f"/v2/{unique_repo_name()}/blobs/uploads/?digest={digest_of(blob)}", blob)
        status, fields, body = conn.response()
        assert status == 201, body
    assert fetch(registry, fields["location"]) == blob
    check_direct_io(expect, before, direct_io(registry), 1, size)


def test_chunks_after_a_first_patch_of_odd_length_read_back_exactly(
    server: tuple[RegistryServer, str],
) -> None:
    """A small odd PATCH (aiohttp's path), then large ones, whole blocks and not, starting
    at odd offsets, then a PUT with a body: each large body realigns itself."""
    registry, expect = server
    small = os.urandom(777)
    large = [os.urandom(4 * MiB), os.urandom(4 * MiB + 5), os.urandom(2 * MiB + 3 * 4096)]
    blob = small + b"".join(large)
    before = direct_io(registry)
    with Connection(registry) as conn:
        conn.send("POST", f"/v2/{unique_repo_name()}/blobs/uploads/")
        status, fields, body = conn.response()
        assert status == 202, body
        location = fields["location"]
        offset = 0
        for piece in [small, *large[:-1]]:
            end = offset + len(piece) - 1
            conn.send(
                "PATCH",
                location,
                piece,
                Content_Range=f"{offset}-{end}",
                Content_Type="application/octet-stream",
            )
            status, fields, body = conn.response()
            assert status == 202, body
            assert fields["range"] == f"0-{end}"
            location, offset = fields["location"], end + 1
        conn.send("PUT", with_digest(location, digest_of(blob)), large[-1])
        status, fields, body = conn.response()
        assert status == 201, body
    assert fetch(registry, fields["location"]) == blob
    check_direct_io(expect, before, direct_io(registry), 3, sum(map(len, large)))


def test_a_body_in_chunked_transfer_encoding_reads_back_exactly(
    server: tuple[RegistryServer, str],
) -> None:
    """docker push sends each layer as one PATCH in chunked transfer encoding (32 KiB
    chunks): aiohttp's parser reads it, and the local driver stages its batches in an
    aligned buffer for O_DIRECT (drivers/local.py, ``_write_staged``)."""
    registry, expect = server
    blob = os.urandom(5 * MiB + 12345)
    before = direct_io(registry)
    with Connection(registry) as conn:
        conn.send("POST", f"/v2/{unique_repo_name()}/blobs/uploads/")
        status, fields, body = conn.response()
        assert status == 202, body
        conn.sock.sendall(
            head(
                "PATCH",
                fields["location"],
                None,
                Transfer_Encoding="chunked",
                Content_Type="application/octet-stream",
            )
        )
        for start in range(0, len(blob), 32 * 1024):
            piece = blob[start : start + 32 * 1024]
            conn.sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.sock.sendall(b"0\r\n\r\n")
        status, fields, body = conn.response()
        assert status == 202, body
        assert fields["range"] == f"0-{len(blob) - 1}"
        conn.send("PUT", with_digest(fields["location"], digest_of(blob)))
        status, fields, body = conn.response()
        assert status == 201, body
    assert fetch(registry, fields["location"]) == blob
    after = direct_io(registry)
    assert after[0] == before[0]  # aiohttp's path, not the receiving thread's
    written, refused = after[1] - before[1], after[2] - before[2]
    if expect == "direct":
        # All but the last batch's tail (under 4 KiB) and the last batch if it was
        # too small to stage (under 256 KiB).
        assert len(blob) - 2 * STAGED_MIN <= written < len(blob) and written % 4096 == 0
        assert refused == 0
    elif expect == "refused":
        assert (written, refused) == (0, 1)
    else:
        assert (written, refused) == (0, 0)


@pytest.mark.parametrize(
    ("remaining", "lead", "serial", "size", "expected"),
    [
        (100, 0, False, MiB, 1),
        (MiB, 0, False, MiB, 1),
        (MiB, 4000, False, MiB, 2),  # the realigning lead, then the rest
        (2 * MiB + 1, 0, False, MiB, 3),
        (64 * MiB, 0, False, MiB, bodies.DIRECT_DEPTH),
        (64 * MiB, 0, True, MiB, 1),
        (5 * MiB, 0, False, 4 * MiB, 2),
    ],
)
def test_a_body_takes_no_more_receiving_buffers_than_it_fills(
    remaining: int, lead: int, serial: bool, size: int, expected: int
) -> None:
    assert bodies._buffers_needed(remaining, lead, serial, size) == expected


def test_a_monolithic_body_takes_large_buffers_and_a_chunk_small_ones() -> None:
    """The disk takes large O_DIRECT appends faster; a chunk's hash overlaps its
    receiving better in small buffers."""
    assert bodies._buffer_size(bodies.LARGE_BODY) == bodies.LARGE_BUFFER
    assert bodies._buffer_size(bodies.LARGE_BODY - 1) == bodies.DIRECT_BUFFER
    assert bodies._buffer_size(8 * MiB) == bodies.DIRECT_BUFFER
    assert bodies.LARGE_BUFFER % bodies.DIRECT_ALIGN == 0


@pytest.mark.parametrize("size", [MiB, 4 * MiB])
def test_spare_receiving_buffers_are_kept_up_to_their_cap_per_size_and_reused(
    monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    monkeypatch.setattr(bodies, "_spare_buffers", {})
    cap = bodies.SPARE_BUFFERS
    made = [bodies._take_buffer(size) for _ in range(cap + 5)]
    other = bodies._take_buffer(size * 2)
    assert len({id(buffer) for buffer in made}) == cap + 5  # none spare yet: all new
    for buffer in [*made, other]:
        bodies._give_buffer(buffer)
    assert len(bodies._spare_buffers[size]) == cap
    assert bodies._spare_buffers[size * 2] == [other]  # kept apart: never handed out as this size
    assert [buffer.closed for buffer in made] == [False] * cap + [True] * 5
    again = bodies._take_buffer(size)
    assert any(again is buffer for buffer in made[:cap])  # reused, not mapped anew
    assert len(again) == size
    for buffer in [again, *bodies._spare_buffers[size], other]:
        buffer.close()
