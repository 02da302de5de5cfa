"""The workload registry: ``WORKLOADS`` maps a name to a :class:`Workload`.

A workload is measured the same way against every server: the runner starts
a fresh Cargohold and a fresh Distribution (empty storage) for each *case*
of the workload (a case is one parameter set, e.g. one blob size), calls
:meth:`Workload.setup` once per server (not timed), then calls
:meth:`Workload.run` ``runs`` times per server, alternating which server goes
first. Around each run it measures the server's CPU seconds and peak RSS and
the client's own CPU seconds; ``run`` returns the workload's own metrics.

To add a workload, subclass :class:`Workload` in a module of this package,
decorate it with :func:`register`, and import the module at the bottom of
this file. See ``benchmarks/README.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ..harness import Server
    from ..run import Context


@dataclass(frozen=True)
class Metric:
    """One number a workload reports per run."""

    key: str
    label: str
    unit: str
    higher_is_better: bool
    limits: tuple[str, ...] = ()
    """Keys of the machine limits this metric is compared with (``Context.limit``)."""
    digits: int = 1
    chart: bool = True
    """Whether the chart shows Cargohold's advantage on this metric."""


# Metrics the runner adds to every run of every workload.
SERVER_CPU = Metric("server_cpu_s", "server CPU", "s", False, digits=2)
SERVER_RSS = Metric("server_peak_rss_mib", "server peak RSS", "MiB", False, digits=0)
SERVER_MEMORY = Metric(
    "server_peak_memory_mib", "server peak memory (shared pages once)", "MiB", False, digits=0
)
CLIENT_CPU = Metric("client_cpu_s", "client CPU", "s", False, digits=2)
OTHER_CPU = Metric("other_cpu_s", "other processes' CPU", "s", False, digits=2)
WALL = Metric("wall_s", "wall time", "s", False, digits=2)
COMMON_METRICS = (SERVER_CPU, SERVER_RSS, SERVER_MEMORY, CLIENT_CPU, OTHER_CPU, WALL)


@dataclass
class Case:
    """One parameter set of a workload; ``label`` tells it apart in the report."""

    label: str = ""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Target:
    """A goal checked against the medians; reported as PASS or MISS, never asserted."""

    name: str
    measured: str
    goal: str
    ok: bool | None
    note: str = ""

    @property
    def status(self) -> str:
        return {True: "PASS", False: "MISS", None: "n/a"}[self.ok]


class Workload:
    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    metrics: ClassVar[tuple[Metric, ...]] = ()
    servers: ClassVar[tuple[str, ...]] = ("cargohold", "distribution")
    """The servers it runs against; a Cargohold-only workload shows "—" for Distribution."""
    one_worker: ClassVar[bool] = False
    """Also run Cargohold with one worker (``cargohold-1``) beside its default: for
    workloads whose options and setup do not depend on the server kind."""

    def cases(self, ctx: Context) -> list[Case]:
        return [Case()]

    async def begin(self, ctx: Context) -> None:
        """Before the first case: start what the cases share (an S3 emulator, say) with
        ``ctx.start_service``, which the runner stops on any exit too."""

    async def begin_case(self, ctx: Context, case: Case) -> None:
        """Before a case's servers start (fresh buckets, say)."""

    async def end(self, ctx: Context) -> None:
        """After the last case, also after a failure: stop what :meth:`begin` started."""

    def server_options(self, ctx: Context, kind: str, case: Case) -> dict[str, Any]:
        """Extra options for the server of ``kind`` (``cargohold``/``distribution``):
        e.g. ``{"config": TOML}`` for Cargohold, ``{"config_extra": YAML}`` for
        Distribution, ``{"env": {...}}`` for either. Auth or storage workloads use this."""
        return {}

    async def setup(self, ctx: Context, server: Server, case: Case) -> Any:
        """Prepare the server (not timed); the result is handed to every run."""
        return None

    async def run(
        self, ctx: Context, server: Server, case: Case, state: Any, run: int
    ) -> dict[str, float]:
        raise NotImplementedError

    def derive(self, case: Case, values: dict[str, float]) -> None:
        """Add metrics computed from the runner's (e.g. CPU per GiB) to ``values``."""

    def targets(self, ctx: Context, case: Case, result: CaseResult) -> list[Target]:
        return []


class CaseResult:
    """Raw runs of one case on every server, with median/min/max helpers."""

    def __init__(self, workload: Workload, case: Case) -> None:
        self.workload = workload
        self.case = case
        self.runs: dict[str, list[dict[str, float]]] = {}
        self.errors: dict[str, list[str]] = {}

    @property
    def key(self) -> str:
        return f"{self.workload.name}[{self.case.label}]" if self.case.label else self.workload.name

    def values(self, server: str, metric: str) -> list[float]:
        return [r[metric] for r in self.runs.get(server, []) if r.get(metric) is not None]

    def median(self, server: str, metric: str) -> float | None:
        values = sorted(self.values(server, metric))
        if not values:
            return None
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2

    def ratio(self, metric: str) -> float | None:
        c, d = self.median("cargohold", metric), self.median("distribution", metric)
        if c is None or not d:
            return None
        return c / d


WORKLOADS: dict[str, Workload] = {}


def register(cls: type[Workload]) -> type[Workload]:
    if cls.name in WORKLOADS:
        raise ValueError(f"workload {cls.name!r} registered twice")
    WORKLOADS[cls.name] = cls()
    return cls


# Registration order is report order.
from . import blobs, small, ci, manifest_get, listing, skopeo, auth, s3, proxy, signing, scanning  # noqa: E402, F401, I001
