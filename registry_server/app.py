"""Build the aiohttp application around a Registry.

Errors are rendered here, once: a library RegistryError becomes the spec's
JSON error body with its status; a storage failure becomes 503 UNAVAILABLE;
anything else is logged with the request id and answered with a JSON 500,
never a traceback or an HTML page.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry

from drivers import open_driver
from registry_core import Config, Registry, RegistryError, StorageError
from registry_core.errors import NotFound, TooLarge, Unavailable, Unsupported
from registry_core.jobs import Leases, Scheduler
from registry_core.lifecycle.maintenance import add_maintenance_jobs
from registry_core.lifecycle.periodic import add_policy_jobs
from registry_core.names import Tenant
from registry_core.scanning import Scanner, ScanService
from registry_core.storage.blobs import UploadLimits
from registry_core.tenancy import Conflict, TenancyStore

from .domains import Domains
from .http.archives import ApiRoutes
from .http.guard import Guard
from .http.lifecycle_api import LifecycleApi
from .http.management import Management
from .http.openapi import add_to as add_openapi
from .http.scanning_api import PullGate, ScanMetrics, ScanningApi, tag_counts
from .http.signatures import add_signing, build_signer, make_registry_keys
from .http.v2 import API_VERSION_HEADER, V2Routes
from .memory import trim_forever
from .observability import LOG_FORMAT_KEY, METRICS_KEY, Metrics
from .proxying import apply_configured_upstreams, build_pull_through, check_key, secret_box
from .state import new_request_id, state_of
from .usage_metrics import UsageMetrics
from .web import WebSessions, Website
from .web.manifest_sections import plug_into_website

LOGGER = logging.getLogger("cargohold.server")
REGISTRY_KEY = web.AppKey("registry", Registry)
V2_KEY = web.AppKey("v2", V2Routes)
TENANCY_KEY = web.AppKey("tenancy", TenancyStore)
GUARD_KEY = web.AppKey("guard", Guard)
SCHEDULER_KEY = web.AppKey("scheduler", Scheduler)
WEBSITE_KEY = web.AppKey("website", Website)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

HandlerType = Callable[[web.Request], Awaitable[web.StreamResponse]]


class InFlight:
    """Requests being handled (request bodies included), so a graceful stop can wait."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count <= 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is being handled; False if *timeout* ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


IN_FLIGHT_KEY = web.AppKey("in_flight", InFlight)


def error_response(request: web.Request, errors: list[RegistryError], status: int) -> web.Response:
    headers: dict[str, str] = dict(API_VERSION_HEADER)
    for error in errors:
        headers.update(error.headers)
    body = msgspec.json.encode({"errors": [error.to_dict() for error in errors]})
    if request.method == "HEAD":
        # The headers a GET would get, as HTTP asks (and as Distribution answers): without a
        # Content-Length some clients (aiohttp's) cannot reuse the connection after a HEAD
        # miss, so every small push paid a new TCP connection on its first request.
        headers["Content-Type"] = "application/json"
        headers["Content-Length"] = str(len(body))
        return web.Response(status=status, headers=headers)
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def _from_http_exception(exc: web.HTTPException) -> RegistryError:
    if exc.status == 404:
        return NotFound()
    if exc.status == 405:
        return Unsupported(headers={"Allow": exc.headers.get("Allow", "")})
    if exc.status == 413:
        return TooLarge("request body too large")
    error = RegistryError(exc.reason)
    error.status = exc.status  # type: ignore[misc]
    return error


def _body_broke_off(request: web.Request, exc: Exception) -> bool:
    """True when *exc* is the request body's own failure, not the server's."""
    return (
        isinstance(exc, HttpProcessingError | ConnectionResetError)
        and request.content.exception() is exc
    )


@web.middleware
async def request_context(request: web.Request, handler: HandlerType) -> web.StreamResponse:
    """Request id, and the one place errors become responses."""
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if _REQUEST_ID.match(incoming) else new_request_id()
    state = state_of(request)
    state.request_id = request_id
    state.metrics = request.app[METRICS_KEY]
    state.log_format = request.app[LOG_FORMAT_KEY]
    in_flight = request.app[IN_FLIGHT_KEY]
    in_flight.enter()
    try:
        response = await handler(request)
    except RegistryError as exc:
        response = error_response(request, [exc], exc.status)
    except StorageError as exc:
        LOGGER.error("storage failure (request %s): %s", request_id, exc)
        response = error_response(request, [Unavailable("storage backend unavailable")], 503)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = _from_http_exception(exc)
        response = error_response(request, [error], exc.status)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if _body_broke_off(request, exc):
            # The client's body broke its framing or the client left mid-body: its fault,
            # worth a line, not a traceback (and never the bytes it sent).
            LOGGER.info("request %s: body ended early or was malformed", request_id)
            error = RegistryError("the request body was malformed or ended early")
            error.status = 400  # type: ignore[misc]
            response = error_response(request, [error], 400)
        else:
            LOGGER.exception("unhandled error (request %s)", request_id)
            error = RegistryError("internal server error", detail={"request_id": request_id})
            response = error_response(request, [error], 500)
    finally:
        in_flight.leave()
    return response


async def common_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Headers every response carries, added as it is prepared (streamed ones too)."""
    response.headers.update(API_VERSION_HEADER)
    request_id = state_of(request).request_id
    if request_id:
        response.headers["X-Request-Id"] = request_id


async def healthz(request: web.Request) -> web.Response:
    state_of(request).route = "healthz"
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state_of(request).route = "readyz"
    try:
        await request.app[REGISTRY_KEY].check()
    except (StorageError, OSError) as exc:
        LOGGER.warning("readiness check failed: %s", exc)
        return web.json_response({"status": "unavailable"}, status=503)
    return web.json_response({"status": "ok"})


async def _purge_loop(registry: Registry, older_than: float, interval: float) -> None:
    while True:
        try:
            purged = await registry.purge_uploads(older_than)
            if purged:
                LOGGER.info("purged %d idle upload session(s)", purged)
        except Exception:
            LOGGER.exception("upload purge failed; will retry")
        await asyncio.sleep(interval)


def state_dir(config: Config) -> Path:
    """Where the server keeps local state: --state-dir, else beside a local store."""
    if config.server.state_dir:
        return Path(config.server.state_dir)
    url = config.storage.url
    if "://" not in url or url.startswith("file://"):
        store = Path(url[len("file://") :] if url.startswith("file://") else url)
        return store.parent / f"{store.name}-state"
    return Path("var") / "state"


async def bootstrap_admin(
    tenancy: TenancyStore,
    directory: Path,
    registry_created: Callable[[Tenant], Awaitable[object]] | None = None,
) -> None:
    """First start with no user: a superuser ``admin`` with a random password.

    Create-if-absent, so of several replicas only one wins; the winner writes
    the password to a 0600 file and prints only that file's path. It also
    makes the registry ``admin/default``, so a newcomer can push at once, and
    awaits *registry_created* for it (its signing keys) like any new registry.
    """
    password = secrets.token_urlsafe(18)
    if not await tenancy.create_first_user("admin", password):
        return
    with contextlib.suppress(Conflict):
        await tenancy.create_owner("admin", "user")
    try:
        record = await tenancy.create_registry("admin", "default")
    except Conflict:
        pass
    else:
        if registry_created is not None:
            await registry_created(record.tenant)

    def write() -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "admin-password"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(password + "\n")
        os.chmod(path, 0o600)
        return path.resolve()

    path = await asyncio.to_thread(write)
    LOGGER.warning(
        "created the superuser 'admin' and the registry admin/default; the password is in %s",
        path,
    )


def add_scanning(
    app: web.Application,
    config: Config,
    registry: Registry,
    scheduler: Scheduler,
    guard: Guard | None,
    collectors: CollectorRegistry,
) -> ScanService | None:
    """Scan on push (through the manifest feed) when ``[scanning]`` is on for this mode."""
    if not config.scanning.is_enabled(config.auth.enabled):
        return None
    scan_metrics = ScanMetrics(collectors)
    service = ScanService(
        registry,
        Scanner(registry, observer=scan_metrics),
        refresh_urls=config.scanning.urls(),
        refresh_interval=config.scanning.seconds("refresh_interval"),
        concurrency=config.scanning.concurrency,
    )
    scan_metrics.queued.set_function(lambda: service.queued)
    service.install(scheduler, interval=config.scanning.seconds("interval"))
    return service


async def first_start(config: Config) -> None:
    """Create what a first start creates (the bootstrap admin and its password file).

    The command line runs this in the parent before it forks workers, so the
    admin exists before any worker answers; a worker's own start-up check then
    finds it (create-if-absent) and does nothing.
    """
    if not (config.auth.enabled and config.auth.bootstrap_admin):
        return
    driver = open_driver(
        config.storage.url, settings=config.storage.driver_settings(), **config.storage.options
    )
    registry = Registry(driver, settings_ttl=0.0)
    signer = build_signer(config, registry, secret_box(config, state_dir(config)))
    try:
        await bootstrap_admin(
            TenancyStore(driver), state_dir(config), functools.partial(make_registry_keys, signer)
        )
    finally:
        await registry.close()


def build_app(config: Config, registry: Registry | None = None) -> web.Application:
    """The application for *config*; pass *registry* to serve one you built yourself."""
    if registry is None:
        registry = Registry(
            open_driver(
                config.storage.url,
                settings=config.storage.driver_settings(),
                **config.storage.options,
            ),
            strict_index=config.manifests.strict_index,
            max_manifest_size=config.manifests.max_size,
            cache_bytes=config.manifests.cache_bytes,
            link_cache_ttl=config.manifests.link_cache_ttl,
            settings_ttl=config.auth.cache_ttl,
        )
    registry.policy.configured_retention = config.retention.configured()
    registry.policy.untagged_grace = config.gc.seconds("grace") or 0.0
    app = web.Application(middlewares=[request_context], client_max_size=1 << 20)
    app.on_response_prepare.append(common_headers)
    app[REGISTRY_KEY] = registry
    app[LOG_FORMAT_KEY] = config.server.log_format
    app[IN_FLIGHT_KEY] = InFlight()
    metrics = Metrics()
    usage_metrics = UsageMetrics(metrics.registry, by_owner=config.quotas.metrics_by_owner)
    app[METRICS_KEY] = metrics
    domains = Domains(config.domains, config.server.trusted_proxies)
    tenancy = TenancyStore(registry.driver)
    guard = Guard(config.auth, tenancy, domains) if config.auth.enabled else None
    app[TENANCY_KEY] = tenancy
    if guard is not None:
        app[GUARD_KEY] = guard
    redirect = config.storage.redirect
    if redirect is None:  # the driver's default: on where signed URLs are the norm (clouds)
        redirect = bool(getattr(registry.driver, "redirect_default", False))
    box = secret_box(config, state_dir(config))
    proxy = build_pull_through(config, registry, box, metrics.registry)
    v2 = V2Routes(
        registry,
        guard,
        domains,
        redirect_expires=config.storage.redirect_expires if redirect else None,
        proxy=proxy,
        upload_limits=UploadLimits(
            per_repository=config.limits.max_uploads_per_repository,
            per_tenant=config.limits.max_uploads_per_tenant,
            stale_after=config.uploads.purge_after,
        ),
        body_timeout=config.limits.body_timeout,
    )
    app[V2_KEY] = v2
    metrics.uploads_in_flight.set_function(lambda: v2.uploads_in_flight)
    v2.add_to(app)
    sessions = WebSessions(guard, tenancy, domains) if guard is not None else None
    ApiRoutes(
        registry, guard, config.archives, sessions, body_timeout=config.limits.body_timeout
    ).add_to(app)
    management = Management(registry, tenancy, guard, upstreams=proxy.upstreams)
    management.add_to(app)
    LifecycleApi(management).add_to(app)
    website = Website(registry, management, sessions, domains)
    website.add_to(app)
    app[WEBSITE_KEY] = website
    add_openapi(app, enabled=guard is not None)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics.handler)
    # Periodic jobs of every process; each runs only where its storage lease is taken.
    scheduler = Scheduler(Leases(registry.driver))
    app[SCHEDULER_KEY] = scheduler
    add_policy_jobs(
        scheduler,
        registry,
        retention_interval=config.retention.interval_seconds(),
        usage_interval=config.quotas.usage_interval,
    )
    in_flight = app[IN_FLIGHT_KEY]
    add_maintenance_jobs(
        scheduler,
        registry,
        config,
        on_gc=metrics.record_gc,
        on_scrub=metrics.record_scrub,
        on_gc_rate=metrics.record_gc_rate,
        # GC is a scheduled job, never a request: any request in flight is a client's.
        clients_busy=lambda: in_flight.count > 0,
    )
    if sessions is not None:
        sessions.add_purge_job(scheduler)
    registry.repo_index.add_job(scheduler)
    signer = add_signing(app, registry, config, box, guard, domains, scheduler)
    management.on_registry_created = functools.partial(make_registry_keys, signer)
    scanning = add_scanning(app, config, registry, scheduler, guard, metrics.registry)
    ScanningApi(management, scanning).add_to(app)
    if scanning is not None:
        v2.pull_gate = PullGate(registry, scanning, guard)
        management.tag_vulnerabilities = functools.partial(tag_counts, scanning)
    plug_into_website(website, signer, scanning)

    async def background(app: web.Application) -> AsyncIterator[None]:
        await check_key(registry.driver, box)
        await apply_configured_upstreams(config, proxy.upstreams, tenancy)
        if guard is not None and config.auth.bootstrap_admin:
            await bootstrap_admin(tenancy, state_dir(config), management.registry_created)
        task = asyncio.create_task(
            _purge_loop(registry, config.uploads.purge_after, config.uploads.purge_interval)
        )
        scheduler.start()
        usage_task = asyncio.create_task(
            usage_metrics.run(registry, max(config.quotas.usage_interval, 1.0))
        )
        trim_task = asyncio.create_task(trim_forever())
        yield
        await scheduler.stop()
        for running in (task, usage_task, trim_task):
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        await proxy.close()
        await registry.close()

    app.cleanup_ctx.append(background)
    return app
