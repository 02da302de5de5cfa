"""The floor of an upload's server CPU in Python: ``recv_into`` one reused buffer, hash, write.

``python -m benchmarks.upload_floor /work/main --size 256 --runs 6``

Not a registry: a blocking-socket server that answers the benchmark client's POST,
PATCH and PUT ?digest= on one connection, appends each body to a file while hashing
it and checks the digest at the end (400 when it differs), with nothing else: no
HTTP parser copy, no bytes object per read, no event loop, no thread hop per batch.
``serial`` reads, hashes and writes on the connection's thread; ``pipe`` reads on it
and hashes and writes on a second thread, two buffers taking turns. Compared with a
checkout's ``cargohold serve --workers 1`` in the same rounds (CPU from ``/proc``
ticks of the whole process, exited threads included), it shows how much of the
registry's CPU per GiB is the bytes' way through aiohttp and asyncio, and so what
taking a large body off aiohttp's parser could save.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BUFFER = 256 * 1024
MODES = ("serial", "pipe")
FLOOR_KINDS = ("mono", "chunked")
"""The uploads the floor server answers: bodies with a Content-Length only."""


class Body:
    """One upload's stored bytes and running hash (reset when a PUT ends it)."""

    def __init__(self, path: str) -> None:
        self.descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.hasher = hashlib.sha256()

    def take(self, view: memoryview) -> None:
        self.hasher.update(view)
        os.write(self.descriptor, view)

    def finish(self, digest: str) -> bool:
        ok = digest == "sha256:" + self.hasher.hexdigest()
        self.hasher = hashlib.sha256()
        os.ftruncate(self.descriptor, 0)
        os.lseek(self.descriptor, 0, os.SEEK_SET)
        return ok


def _receive_serial(conn: socket.socket, body: Body, remaining: int) -> None:
    view = memoryview(bytearray(BUFFER))
    while remaining:
        n = conn.recv_into(view[: min(BUFFER, remaining)])
        if not n:
            raise ConnectionError("the client left mid-body")
        body.take(view[:n])
        remaining -= n


def _receive_pipe(conn: socket.socket, body: Body, remaining: int) -> None:
    full: queue.SimpleQueue[tuple[memoryview, int] | None] = queue.SimpleQueue()
    free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
    for _ in range(2):
        free.put(memoryview(bytearray(BUFFER)))

    def store() -> None:
        while (item := full.get()) is not None:
            view, n = item
            body.take(view[:n])
            free.put(view)

    worker = threading.Thread(target=store)
    worker.start()
    try:
        while remaining:
            view = free.get()
            n = conn.recv_into(view[: min(BUFFER, remaining)])
            if not n:
                raise ConnectionError("the client left mid-body")
            full.put((view, n))
            remaining -= n
    finally:
        full.put(None)
        worker.join()


def _answer(conn: socket.socket, status: str, location: bool) -> None:
    extra = "Location: /v2/floor/blobs/uploads/1\r\n" if location else ""
    conn.sendall(f"HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\n\r\n".encode())


def _serve_connection(conn: socket.socket, store: str, mode: str) -> None:
    receive = _receive_serial if mode == "serial" else _receive_pipe
    body = Body(os.path.join(store, f"data-{threading.get_native_id()}"))
    pending = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in pending:
                more = conn.recv(65536)
                if not more:
                    return
                pending += more
            head, pending = pending.split(b"\r\n\r\n", 1)
            request, *lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request.split(" ")
            fields = dict(line.split(":", 1) for line in lines)
            length = int(next((v for k, v in fields.items() if k.lower() == "content-length"), "0"))
            first, pending = pending[:length], pending[length:]
            body.take(memoryview(first))
            receive(conn, body, length - len(first))
            if method in ("POST", "PATCH"):
                _answer(conn, "202 Accepted", location=True)
            elif method == "PUT":
                ok = body.finish(target.split("digest=", 1)[1])
                _answer(conn, "201 Created" if ok else "400 Bad Request", location=False)
            else:
                _answer(conn, "405 Method Not Allowed", location=False)


def serve(port: int, store: str, mode: str) -> None:
    listener = socket.create_server(("127.0.0.1", port))
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve_connection, args=(conn, store, mode), daemon=True).start()


def start_floor(mode: str, scratch: str) -> tuple[subprocess.Popen[bytes], str]:
    """A floor server in its own process; its URL once it accepts connections."""
    from .harness import free_port

    port = free_port()
    store = tempfile.mkdtemp(prefix=f"floor-{mode}-", dir=scratch)
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.upload_floor", "--serve", str(port), store, mode],
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"the {mode} floor server did not start") from None
            time.sleep(0.05)


def compare(checkout: str, size_mib: int, runs: int) -> None:
    from registry_core.storage.layout import ROOT

    from .client import BlobSource, GiB, MiB
    from .harness import ProcTree, loadavg
    from .upload_ab import KINDS, REPO, start

    source = BlobSource()
    scratch = tempfile.mkdtemp(prefix="upload-floor-")
    processes: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for mode in MODES:
            processes[mode] = start_floor(mode, scratch)
        served = start(checkout, scratch)
        processes["cargohold"] = (served.process, served.url)
        for run in range(runs):
            for kind in FLOOR_KINDS:
                upload = KINDS[kind]
                for name, (process, url) in processes.items():
                    blob = source.blob(size_mib * MiB, os.urandom(16))
                    tree = ProcTree(process.pid)
                    cpu, began = tree.cpu_seconds(), time.monotonic()
                    upload(url, REPO, blob)
                    wall = time.monotonic() - began
                    per_gib = (tree.cpu_seconds() - cpu) / (blob.size / GiB)
                    results.setdefault((kind, name), []).append((per_gib, blob.size / MiB / wall))
                    print(
                        f"run {run} {kind:7} {name:9}: {per_gib:.2f} CPU s/GiB, "
                        f"{blob.size / MiB / wall:.0f} MiB/s, load {loadavg()[0]:.1f}",
                        flush=True,
                    )
                    if name == "cargohold":
                        shutil.rmtree(f"{served.store}/{ROOT}/blobs", ignore_errors=True)
    finally:
        for process, _ in processes.values():
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"medians of {runs}, {size_mib} MiB per upload:")
    for (kind, name), rows in sorted(results.items()):
        print(
            f"  {kind:7} {name:9}: {statistics.median(r[0] for r in rows):.2f} CPU s/GiB, "
            f"{statistics.median(r[1] for r in rows):.0f} MiB/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", nargs="?", help="a folder with a .venv (PATH[@VAR=VALUE])")
    parser.add_argument("--size", type=int, default=256, help="MiB per upload (multiple of 8)")
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--serve", nargs=3, metavar=("PORT", "STORE", "MODE"), help="internal")
    args = parser.parse_args()
    if args.serve:
        port, store, mode = args.serve
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        serve(int(port), store, mode)
    elif args.checkout:
        compare(args.checkout, args.size, args.runs)
    else:
        parser.error("name a checkout to compare with")


if __name__ == "__main__":
    main()
