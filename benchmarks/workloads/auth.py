"""What logins cost: manifest GET anonymous vs Basic vs Bearer, on a public and a private
registry of a Cargohold with auth on (issue 3).

One Cargohold with ``[auth] enabled = true`` holds two registries of the owner
``bench``: ``bench/public`` (public) and ``bench/private`` (private), each with the
same image, and a user ``bench-reader`` with the ``read`` role on both (seeded with
the ``cargohold users|owners|registries|members`` commands on the server's storage).
Every run measures five variants of the manifest GET workload (wrk, 64 connections,
by tag), in an order that rotates from run to run:

- anonymous on the public registry (the reference);
- Basic credentials (``bench-reader`` + password) on every request, public and private;
- a Bearer token on every request, fetched from ``/v2/token`` with those Basic
  credentials for ``repository:<name>:pull``, public and private.

Each variant is warmed with one request first, so verified credentials are in the
server's cache (``auth.cache_ttl``, default 10 s) when wrk starts: the issue asks
for the cost "once credentials are cached". Each auth variant's rate is divided by
the anonymous rate of the same run; the target is >= 0.9 (costs < 10 %).

Distribution has no comparable login setup here (its token auth needs a separate
token server), so it runs only the anonymous variant, as an open registry: the
reference column for what Cargohold's auth path costs next to it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import urllib.parse
from typing import TYPE_CHECKING, Any

import aiohttp

from ..client import ACCEPT_MANIFESTS, OCI_MANIFEST, BenchError, SmallImage, sha256
from ..harness import Server, cargohold_command, client_env
from ..wrk import run_wrk
from . import Case, CaseResult, Metric, Target, Workload, register
from .blobs import fmt

if TYPE_CHECKING:
    from ..run import Context

CONNECTIONS = 64
OWNER = "bench"
IMAGE = "app"
TAG = "latest"
READER = "bench-reader"
WRITER = "bench-writer"
GOAL = 0.9  # an auth variant's rate / the anonymous rate: "costs < 10 %"

# key, label, credentials ("" anonymous, "basic", "bearer"), registry
VARIANTS = (
    ("anon_public", "anonymous, public registry", "", "public"),
    ("basic_public", "Basic, public registry", "basic", "public"),
    ("bearer_public", "Bearer, public registry", "bearer", "public"),
    ("basic_private", "Basic, private registry", "basic", "private"),
    ("bearer_private", "Bearer, private registry", "bearer", "private"),
)
AUTH_VARIANTS = VARIANTS[1:]

AUTH_CONFIG = """\
[auth]
enabled = true
bootstrap_admin = false
# The benchmark never sends a wrong password; keep the login throttle out of the way.
max_failures = 1000000
slowdown_after = 1000000
"""


def repo(registry: str) -> str:
    return f"{OWNER}/{registry}/{IMAGE}"


def _metrics() -> tuple[Metric, ...]:
    found = []
    for key, label, creds, _registry in VARIANTS:
        found.append(
            Metric(
                f"{key}_req_s",
                f"{label}: requests/s",
                "req/s",
                True,
                limits=("nginx_small_req_s",) if not creds else (),
                digits=0,
            )
        )
    for key, label, _creds, _registry in AUTH_VARIANTS:
        found.append(Metric(f"{key}_ratio", f"{label}: rate / anonymous rate", "", True, digits=3))
    for key, label, _creds, _registry in VARIANTS:
        found.append(
            Metric(f"{key}_cpu_us", f"{label}: server CPU per request", "µs", False, digits=0)
        )
    # CPU per request varies less than the rate on a shared machine: the auth path's cost
    # as server CPU, next to the rate the target is about.
    for key, label, _creds, _registry in AUTH_VARIANTS:
        found.append(
            Metric(
                f"{key}_cpu_ratio",
                f"{label}: CPU per request / anonymous",
                "",
                False,
                digits=3,
                chart=False,
            )
        )
    found.append(Metric("errors", "errors (non-2xx, socket), all variants", "", False, digits=0))
    return tuple(found)


async def _cli(*args: str, storage: str, stdin: str | None = None) -> str:
    """``cargohold ARGS --storage URL``: the documented way to seed users and registries."""
    env = {k: v for k, v in client_env().items() if not k.startswith("CARGOHOLD_")}
    proc = await asyncio.create_subprocess_exec(
        *cargohold_command(),
        *args,
        "--storage",
        storage,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    out, _ = await proc.communicate(stdin.encode() if stdin is not None else None)
    if proc.returncode != 0:
        raise BenchError(f"cargohold {' '.join(args)} failed ({proc.returncode}): {out[-500:]!r}")
    return out.decode(errors="replace")


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def _get(
    http: aiohttp.ClientSession, url: str, authorization: str = ""
) -> tuple[int, bytes, Any]:
    headers = {"Accept": ACCEPT_MANIFESTS}
    if authorization:
        headers["Authorization"] = authorization
    async with http.get(url, headers=headers) as resp:
        return resp.status, await resp.read(), resp.headers


@register
class AuthManifestGet(Workload):
    name = "auth-manifest-get"
    title = "Manifest GET with auth"
    description = (
        f"Cargohold with auth on: wrk ({CONNECTIONS} connections) GET by tag anonymous on a "
        "public registry, then with Basic credentials and with a Bearer token from /v2/token "
        "on a public and on a private registry (credentials cached first), every run; each "
        "auth rate over the same run's anonymous rate. Distribution: anonymous only (open)."
    )
    metrics = _metrics()

    def cases(self, ctx: Context) -> list[Case]:
        # Five wrk runs per Cargohold run: in quick mode each is short (wrk takes whole
        # seconds).
        duration = max(1, round(min(ctx.get_duration, 1) if ctx.quick else ctx.get_duration))
        return [Case(f"c{CONNECTIONS} {duration:g}s each", {"duration": duration})]

    def server_options(self, ctx: Context, kind: str, case: Case) -> dict[str, Any]:
        if kind != "cargohold":
            return {}
        # The harness turns auth off in the environment; turn it back on.
        return {"config": AUTH_CONFIG, "env": {"CARGOHOLD_AUTH_ENABLED": "true"}}

    async def setup(self, ctx: Context, server: Server, case: Case) -> Any:
        if server.kind != "cargohold":
            return await self._setup_open(server)
        storage = server.storage.as_uri()
        reader_pw = "pw-" + secrets.token_urlsafe(16)
        writer_pw = "pw-" + secrets.token_urlsafe(16)
        await asyncio.gather(
            _cli("users", "create", READER, "--password-stdin", storage=storage, stdin=reader_pw),
            _cli("users", "create", WRITER, "--password-stdin", storage=storage, stdin=writer_pw),
            _cli("owners", "create", OWNER, storage=storage),
        )
        await asyncio.gather(
            _cli("registries", "create", f"{OWNER}/public", "--public", storage=storage),
            _cli("registries", "create", f"{OWNER}/private", storage=storage),
        )
        await asyncio.gather(
            *(
                _cli("members", "add", f"{OWNER}/{reg}", user, "--role", role, storage=storage)
                for reg in ("public", "private")
                for user, role in ((READER, "read"), (WRITER, "write"))
            )
        )
        image = SmallImage.make()
        body = image.manifest(purpose="auth-manifest-get")
        auth = aiohttp.BasicAuth(WRITER, writer_pw)
        async with _session(auth) as http:
            for reg in ("public", "private"):
                await image.push_blobs(http, server.url, repo(reg))
                async with http.put(
                    f"{server.url}/v2/{repo(reg)}/manifests/{TAG}",
                    data=body,
                    headers={"Content-Type": OCI_MANIFEST},
                ) as resp:
                    if resp.status != 201:
                        raise BenchError(
                            f"manifest PUT answered {resp.status}: {await resp.text()}"
                        )
        state = {"reader": (READER, reader_pw), "body": body, "digest": sha256(body)}
        # What each variant must see: the private registry refuses anonymous callers,
        # every credential gets the manifest.
        async with _session() as http:
            status, _, headers = await _get(http, self._url(server, "private"))
            if status != 401 or "Bearer realm=" not in headers.get("WWW-Authenticate", ""):
                raise BenchError(f"anonymous GET on the private registry answered {status}")
            for key, _label, creds, reg in VARIANTS:
                await self._check(http, server, state, creds, reg, key)
        return state

    async def _setup_open(self, server: Server) -> Any:
        image = SmallImage.make()
        body = image.manifest(purpose="auth-manifest-get")
        async with _session() as http:
            await image.push_blobs(http, server.url, repo("public"))
            async with http.put(
                f"{server.url}/v2/{repo('public')}/manifests/{TAG}",
                data=body,
                headers={"Content-Type": OCI_MANIFEST},
            ) as resp:
                if resp.status != 201:
                    raise BenchError(f"manifest PUT answered {resp.status}: {await resp.text()}")
            status, got, _ = await _get(http, self._url(server, "public"))
            if status != 200 or got != body:
                raise BenchError(f"GET manifest answered {status} {got[:200]!r}")
        return {"body": body}

    def _url(self, server: Server, registry: str) -> str:
        return f"{server.url}/v2/{repo(registry)}/manifests/{TAG}"

    async def _authorization(
        self, http: aiohttp.ClientSession, server: Server, state: Any, creds: str, registry: str
    ) -> str:
        if not creds:
            return ""
        basic = _basic(*state["reader"])
        if creds == "basic":
            return basic
        query = urllib.parse.urlencode(
            {"service": server.host, "scope": f"repository:{repo(registry)}:pull"}
        )
        async with http.get(
            f"{server.url}/v2/token?{query}", headers={"Authorization": basic}
        ) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise BenchError(f"GET /v2/token answered {resp.status}: {text[:300]}")
        return "Bearer " + json.loads(text)["token"]

    async def _check(
        self,
        http: aiohttp.ClientSession,
        server: Server,
        state: Any,
        creds: str,
        registry: str,
        key: str,
    ) -> str:
        """The variant's Authorization header, after one GET with it (which also puts the
        verified credentials in the server's cache before wrk starts)."""
        authorization = await self._authorization(http, server, state, creds, registry)
        status, got, _ = await _get(http, self._url(server, registry), authorization)
        if status != 200 or got != state["body"]:
            raise BenchError(f"{key}: GET manifest answered {status} {got[:200]!r}")
        return authorization

    async def run(
        self, ctx: Context, server: Server, case: Case, state: Any, run: int
    ) -> dict[str, float]:
        duration = case.params["duration"]
        if server.kind != "cargohold":
            variants = VARIANTS[:1]
        else:  # rotate the order from run to run, so drift does not favour one variant
            shift = run % len(VARIANTS)
            variants = VARIANTS[shift:] + VARIANTS[:shift]
        values: dict[str, float] = {"errors": 0.0}
        assert server.tree is not None
        for key, _label, creds, registry in variants:
            async with _session() as http:
                authorization = await self._check(http, server, state, creds, registry, key)
            cpu0 = server.tree.cpu_seconds()
            result = await run_wrk(
                self._url(server, registry),
                connections=CONNECTIONS,
                threads=ctx.wrk_threads,
                duration=duration,
                env={"WRK_AUTHORIZATION": authorization},
            )
            cpu = server.tree.cpu_seconds() - cpu0
            if result["errors_status"]:
                # A refused login would be fast and wrong: not a measurement.
                raise BenchError(
                    f"{key}: {result['errors_status']:.0f} of {result['requests']:.0f} "
                    "requests answered non-2xx"
                )
            values[f"{key}_req_s"] = result["req_s"]
            values[f"{key}_cpu_us"] = 1e6 * cpu / max(result["requests"], 1)
            values["errors"] += result["errors"]
        anonymous, anonymous_cpu = values["anon_public_req_s"], values["anon_public_cpu_us"]
        for key, *_ in AUTH_VARIANTS:
            if f"{key}_req_s" in values:
                values[f"{key}_ratio"] = values[f"{key}_req_s"] / anonymous
                values[f"{key}_cpu_ratio"] = values[f"{key}_cpu_us"] / anonymous_cpu
        return values

    def targets(self, ctx: Context, case: Case, result: CaseResult) -> list[Target]:
        anonymous = result.median("cargohold", "anon_public_req_s")
        targets = []
        for key, label, _creds, _registry in AUTH_VARIANTS:
            ratio = result.median("cargohold", f"{key}_ratio")
            rate = result.median("cargohold", f"{key}_req_s")
            if ratio is None or rate is None or anonymous is None:
                continue
            targets.append(
                Target(
                    f"Auth path costs < 10% of the anonymous rate: {label}",
                    f"{fmt(rate, 0)} req/s = {ratio:.1%} of anonymous {fmt(anonymous, 0)} "
                    "(median of per-run ratios)",
                    f">= {GOAL:.0%} of anonymous",
                    ratio >= GOAL,
                )
            )
        return targets


def _session(auth: aiohttp.BasicAuth | None = None) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        auth=auth,
        timeout=aiohttp.ClientTimeout(total=120),
        auto_decompress=False,
        trust_env=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )
