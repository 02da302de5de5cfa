"""moto's S3 server with a per-request timer: what each kind of request costs moto.

``python -m benchmarks.workloads.gc_moto_timing -H 127.0.0.1 -p PORT`` runs
``moto_server`` with a WSGI wrapper that adds, per ``(caller, kind)``, the count, the
handling thread's CPU seconds and the wall seconds to a JSON file (``$MOTO_TIMING_FILE``,
rewritten at most 5 times a second). *caller* is the botocore app id of the User-Agent
(``AWS_SDK_UA_APP_ID``: the GC benchmark gives its GC processes ``gc``), else ``-``;
*kind* is the S3 operation guessed from the method, query and headers (``list``,
``head``, ``get``, ``put``, ``copy``, ``delete``, ``delete-many``, ``upload``...).

A diagnostic for ``benchmarks.workloads.gc_probe``: moto is one Python process, so the
thread CPU of a request is what that request took from every other one.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

_APP = re.compile(r"app/([A-Za-z0-9_.-]+)")
_VARYING = (
    (re.compile(r"[0-9a-f]{2,}(-[0-9a-f]+)+"), "U"),  # upload ids
    (re.compile(r"/(sha256|[0-9a-f]{2}|[0-9a-f]{8,}|[a-z]+[0-9]+)(?=[/~@])"), "/*"),
    (re.compile(r"_entries/.*"), "_entries/*"),
)


def _shape(prefix: str) -> str:
    """A listing's prefix with digests, ids and numbered names as ``*``: its kind."""
    shape = prefix.split("docker/registry/v2/", 1)[-1]
    for pattern, replacement in _VARYING:
        shape = pattern.sub(replacement, shape)
    return shape[:70]


def kind_of(environ: dict[str, Any]) -> str:
    """The S3 operation of a request, from what the WSGI environment shows."""
    method = environ.get("REQUEST_METHOD", "")
    query = environ.get("QUERY_STRING", "")
    if method == "GET" and ("list-type" in query or "prefix=" in query or "delimiter" in query):
        prefix = urllib.parse.parse_qs(query).get("prefix", [""])[0]
        return f"list {_shape(prefix)}"
    if method == "POST" and "delete" in query:
        return "delete-many"
    if method == "PUT" and environ.get("HTTP_X_AMZ_COPY_SOURCE"):
        return "copy"
    if "uploads" in query or "uploadId" in query:
        return f"upload-{method.lower()}"
    return method.lower()


class Timing:
    """The WSGI wrapper and its totals."""

    def __init__(self, app: Callable[..., Iterable[bytes]], path: str) -> None:
        self.app = app
        self.path = path
        self.totals: dict[str, list[float]] = {}
        self.lock = threading.Lock()
        self.written = 0.0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        cpu, wall = time.thread_time(), time.perf_counter()
        body = list(self.app(environ, start_response))
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        found = _APP.search(environ.get("HTTP_USER_AGENT", ""))
        name = f"{found.group(1) if found else '-'} {kind_of(environ)}"
        with self.lock:
            total = self.totals.setdefault(name, [0, 0.0, 0.0])
            total[0] += 1
            total[1] += cpu
            total[2] += wall
            now = time.monotonic()
            if now - self.written >= 0.2:
                self.written = now
                self._write()
        return body

    def _write(self) -> None:
        temporary = f"{self.path}.tmp"
        with open(temporary, "w") as f:
            json.dump({"at": time.time(), "totals": self.totals}, f)
        os.replace(temporary, self.path)


def main() -> None:
    import moto.server

    original = moto.server.run_simple

    def run_simple(host: str, port: int, app: Any, **kwargs: Any) -> None:
        path = os.environ.get("MOTO_TIMING_FILE", "moto-timing.json")
        original(host, port, Timing(app, path), **kwargs)

    moto.server.run_simple = run_simple
    moto.server.main()


if __name__ == "__main__":
    main()
