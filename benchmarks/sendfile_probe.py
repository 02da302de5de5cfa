"""How fast one blob leaves over loopback with asyncio's ``loop.sock_sendfile`` (one call
for the whole remaining count per writable event) against the server's
``registry_server.http.sendfile.send_file`` (short calls back to back): the probe that
justified the latter. A client process reads each transfer into a reused buffer.

    python -m benchmarks.sendfile_probe [--size-mib 1024] [--runs 3]

Prints MiB/s and the server process's user and kernel CPU seconds per GiB for each run.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import socket
import tempfile
import time
from multiprocessing.queues import Queue

from registry_server.http.sendfile import send_file


def _client(port: int, size: int, results: Queue[float]) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    buffer = memoryview(bytearray(1 << 20))
    got = 0
    started = time.perf_counter()
    while got < size:
        n = sock.recv_into(buffer)
        if not n:
            break
        got += n
    results.put(time.perf_counter() - started)
    sock.close()


async def _one(
    mode: str, path: str, size: int, server: socket.socket
) -> tuple[float, float, float]:
    loop = asyncio.get_running_loop()
    results: Queue[float] = multiprocessing.Queue()
    reader = multiprocessing.Process(target=_client, args=(server.getsockname()[1], size, results))
    reader.start()
    conn, _ = await loop.sock_accept(server)
    conn.setblocking(False)
    with open(path, "rb") as file:
        before = resource.getrusage(resource.RUSAGE_SELF)
        if mode == "whole":
            await loop.sock_sendfile(conn, file, 0, size)
        else:
            await send_file(loop, conn.fileno(), file.fileno(), 0, size)
        after = resource.getrusage(resource.RUSAGE_SELF)
    seconds = await asyncio.to_thread(results.get)
    await asyncio.to_thread(reader.join)
    conn.close()
    gib = size / 2**30
    return (
        size / seconds / 2**20,
        (after.ru_utime - before.ru_utime) / gib,
        (after.ru_stime - before.ru_stime) / gib,
    )


async def _main(size: int, runs: int) -> None:
    with tempfile.NamedTemporaryFile(dir=os.environ.get("TMPDIR")) as blob:
        for _ in range(size >> 20):
            blob.write(os.urandom(1 << 20))
        blob.flush()
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        try:
            for run in range(runs):
                for mode in ("whole", "calls"):
                    rate, user, kernel = await _one(mode, blob.name, size, server)
                    print(
                        f"run {run + 1} {mode:5}: {rate:7.0f} MiB/s, "
                        f"user {user:.3f} s/GiB, kernel {kernel:.3f} s/GiB"
                    )
        finally:
            server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(_main(args.size_mib << 20, args.runs))


if __name__ == "__main__":
    main()
