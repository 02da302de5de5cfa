"""Metrics and access logs: one place that sees every finished request.

aiohttp calls the access logger after the response is fully sent (sendfile
included), which is the only point where status, bytes out and duration are
all known, so the Prometheus counters are updated there too. Labels carry the
route kind, method and status, never a repository name: names are unbounded
and, across tenants, a leak.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, Metric

from drivers.local import direct_io

from .state import state_of

ACCESS_LOGGER = logging.getLogger("cargohold.access")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods that get a label of their own; any other (the client's choice) counts as OTHER."""


class _DirectIOCollector:
    """The local driver's ``O_DIRECT`` writes of upload bodies (``drivers.local.direct_io``,
    counted by the threads that write them), read at each scrape."""

    def collect(self) -> list[Metric]:
        written = CounterMetricFamily(
            "cargohold_upload_direct_io_bytes",
            "Upload body bytes the local driver wrote with O_DIRECT.",
            value=direct_io.bytes,
        )
        refused = CounterMetricFamily(
            "cargohold_upload_direct_io_refusals",
            "Upload writers whose file system refused O_DIRECT (they wrote buffered).",
            value=direct_io.refusals,
        )
        return [written, refused]


class Metrics:
    """The server's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[Any, str, int], tuple[Any, Any, Any, Any]] = {}
        self.requests = Counter(
            "cargohold_http_requests",
            "Requests served, by route kind, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cargohold_http_request_duration_seconds",
            "Time from request start to the last byte of the response.",
            ["route", "method"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.bytes_in = Counter(
            "cargohold_http_request_bytes",
            "Request body bytes received.",
            ["route"],
            registry=self.registry,
        )
        self.bytes_out = Counter(
            "cargohold_http_response_bytes",
            "Response body bytes sent.",
            ["route"],
            registry=self.registry,
        )
        self.limit_refusals = Counter(
            "cargohold_limit_refusals",
            "Requests or connections refused or closed by a resource limit, by limit "
            "(connections, header_timeout, keepalive_timeout, body_timeout, header_size, "
            "uploads_per_repository, uploads_per_tenant).",
            ["limit"],
            registry=self.registry,
        )
        self.bodies_direct = Counter(
            "cargohold_upload_bodies_direct",
            "Upload bodies read straight off the socket (large, plain HTTP, local storage).",
            registry=self.registry,
        )
        self.registry.register(_DirectIOCollector())  # type: ignore[arg-type]
        self.uploads_in_flight = Gauge(
            "cargohold_uploads_in_flight",
            "Upload requests currently streaming data.",
            registry=self.registry,
        )

        # Garbage collection and scrub, as run by this process (the lease holder works).
        self.gc_runs = Counter(
            "cargohold_gc_runs", "GC runs this process completed.", registry=self.registry
        )
        self.gc_reclaimed_bytes = Counter(
            "cargohold_gc_reclaimed_bytes",
            "Bytes of blob data GC deleted.",
            registry=self.registry,
        )
        self.gc_reclaimed_objects = Counter(
            "cargohold_gc_reclaimed_objects",
            "Objects GC deleted, by kind (blob, layer_link, revision, tag, referrer).",
            ["kind"],
            registry=self.registry,
        )
        self.gc_storage_requests = Counter(
            "cargohold_gc_storage_requests",
            "Storage requests GC runs made.",
            registry=self.registry,
        )
        self.gc_last_duration = Gauge(
            "cargohold_gc_last_duration_seconds",
            "Duration of this process's last GC run (mark and sweep).",
            ["phase"],
            registry=self.registry,
        )
        self.gc_last_run = Gauge(
            "cargohold_gc_last_run_timestamp_seconds",
            "When this process's last GC run ended.",
            registry=self.registry,
        )
        self.gc_pacing_rate = Gauge(
            "cargohold_gc_pacing_rate",
            "Storage requests per second the GC run in this process may start now, as its "
            "adaptive pacing set it (+Inf: not limited; 0: no run in progress).",
            registry=self.registry,
        )
        self.scrub_blobs = Counter(
            "cargohold_scrub_blobs_checked",
            "Blobs scrub re-read and hashed.",
            registry=self.registry,
        )
        self.scrub_problems = Counter(
            "cargohold_scrub_problems",
            "Problems scrub found, by kind.",
            ["kind"],
            registry=self.registry,
        )

    def record_gc(self, report: Any) -> None:
        """Count one GC run (a ``registry_core.lifecycle.gc.GcReport``)."""
        self.gc_runs.inc()
        self.gc_reclaimed_bytes.inc(report.bytes_deleted)
        for kind, count in (
            ("blob", report.blobs_deleted),
            ("layer_link", report.layer_links_removed),
            ("revision", report.revisions_removed),
            ("tag", report.tags_removed),
            ("referrer", report.referrers_removed),
        ):
            self.gc_reclaimed_objects.labels(kind).inc(count)
        self.gc_storage_requests.inc(report.storage_requests)
        self.gc_last_duration.labels("mark").set(report.mark_seconds)
        self.gc_last_duration.labels("sweep").set(report.sweep_seconds)
        self.gc_last_duration.labels("total").set(report.duration)
        self.gc_last_run.set(time.time())

    def record_gc_rate(self, rate: float | None) -> None:
        """The running GC's current request rate (None: unlimited)."""
        self.gc_pacing_rate.set(math.inf if rate is None else rate)

    def record_scrub(self, report: Any) -> None:
        """Count one scrub step (a ``registry_core.lifecycle.scrub.ScrubReport``)."""
        self.scrub_blobs.inc(report.blobs_checked)
        for problem in report.problems:
            self.scrub_problems.labels(problem.kind).inc()

    def observe(
        self,
        request: web.BaseRequest,
        response: web.StreamResponse,
        seconds: float,
        sent: int | None = None,
    ) -> None:
        """Count one finished request; *sent* is its ``body_bytes`` if already known."""
        state = state_of(request)
        if sent is None:
            sent = body_bytes(request, response)
        method = request.method if request.method in METHODS else "OTHER"
        key = (state.route, method, response.status)
        children = self._children.get(key)
        if children is None:
            # prometheus_client's labels() locks and converts on every call; the labelled
            # series of one route, method and status never change, so look them up once.
            # Every label set lives in prometheus_client forever: each label is bounded.
            route, method, status = key
            children = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route, method),
                self.bytes_in.labels(route),
                self.bytes_out.labels(route),
            )
            if len(self._children) < 4096:  # methods are the client's choice: bounded
                self._children[key] = children
        requests, latency, bytes_in, bytes_out = children
        requests.inc()
        latency.observe(seconds)
        # Adding zero changes nothing and each inc takes a lock: most small requests (a
        # HEAD, a POST, a manifest PUT's answer) have no body one way or the other.
        if state.bytes_in:
            bytes_in.inc(state.bytes_in)
        if sent:
            bytes_out.inc(sent)

    async def handler(self, request: web.Request) -> web.Response:
        state_of(request).route = "metrics"
        response = web.Response(body=generate_latest(self.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response


def body_bytes(request: web.BaseRequest, response: web.StreamResponse) -> int:
    """Body bytes sent (aiohttp's body_length also counts the status line and headers)."""
    if request.method == "HEAD":
        return 0  # Content-Length announces what a GET would get; no body is sent
    if response.content_length is not None and response.status not in (204, 304):
        return response.content_length if response.prepared else 0
    return response.body_length


METRICS_KEY = web.AppKey("metrics", Metrics)
LOG_FORMAT_KEY = web.AppKey("log_format", str)


class AccessLogger(AbstractAccessLogger):
    """One structured line per request (text or JSON), and the metrics update."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        # The middleware leaves the app's metrics and log format on the request;
        # a request that never reached it (unparseable HTTP) is logged as text.
        state = state_of(request)
        sent = body_bytes(request, response)
        metrics = state.metrics
        if metrics is not None:
            metrics.observe(request, response, time, sent)
        if not self.logger.isEnabledFor(logging.INFO):
            return
        duration = round(time * 1000, 3)
        if state.log_format == "json":
            record = {
                "ts": _now(),
                "request_id": state.request_id,
                "remote": request.remote or "",
                "method": request.method,
                "path": request.path,
                "route": state.route,
                "repository": state.repository,
                "status": response.status,
                "bytes_in": state.bytes_in,
                "bytes_out": sent,
                "duration_ms": duration,
            }
            self.logger.info(msgspec.json.encode(record).decode())
            return
        # The same fields in the same order, as key=value; an absent repository is left out.
        # One f-string: this line is built for every request.
        repository = "" if state.repository is None else f" repository={state.repository}"
        self.logger.info(
            f"ts={_now()} request_id={state.request_id} remote={request.remote or ''} "
            f"method={request.method} path={request.path} route={state.route}{repository} "
            f"status={response.status} bytes_in={state.bytes_in} bytes_out={sent} "
            f"duration_ms={duration}"
        )

    @property
    def enabled(self) -> bool:
        return True


_second: list[Any] = [None, ""]
"""The last whole second formatted, with its text: strftime once per second, not per line."""


def _now() -> str:
    moment = time.time()
    whole = int(moment)
    if _second[0] != whole:
        _second[:] = [whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))]
    return f"{_second[1]}.{int(moment % 1 * 1000):03d}Z"
