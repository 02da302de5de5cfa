"""Turn a results dict (the JSON the runner writes) into ``latest.md`` and ``latest.png``.

Works from the JSON alone, so ``python -m benchmarks.report results/latest.json``
re-renders an old run (``results/NAME.json`` -> ``NAME.md`` and ``NAME.png`` beside it).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from .limits import LABELS

SERVERS = ("cargohold", "distribution")
COMMON = (
    "server_cpu_s",
    "server_peak_rss_mib",
    "server_peak_memory_mib",
    "client_cpu_s",
    "other_cpu_s",
    "wall_s",
)


def _values(entry: dict[str, Any], server: str, key: str) -> list[float]:
    return [r[key] for r in entry["runs"].get(server, []) if r.get(key) is not None]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _num(value: float | None, digits: int) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _cell(entry: dict[str, Any], server: str, key: str, digits: int) -> str:
    values = _values(entry, server, key)
    if not values:
        return "failed" if entry["errors"].get(server) else "—"
    med = _median(values)
    if len(values) == 1:
        return _num(med, digits)
    return f"{_num(med, digits)} ({_num(min(values), digits)}-{_num(max(values), digits)})"


def _load(values: list[float] | None) -> str:
    return "/".join(f"{v:.2f}" for v in values) if values else "?"


def _limit_name(key: str) -> str:
    base = key.split("[")[0]
    return LABELS.get(base, base) + (" " + key[len(base) :] if "[" in key else "")


def _limit(report: dict[str, Any], key: str, case: str) -> tuple[str, float] | None:
    for name in (f"{key}[{case}]", key):
        if name in report["limits"]:
            return name, report["limits"][name]["median"]
    return None


def advantage(entry: dict[str, Any], key: str) -> tuple[float, float, float] | None:
    """Cargohold's advantage on a metric (>1: Cargohold better): median, low, high."""
    meta = entry["metrics"][key]
    c, d = _values(entry, "cargohold", key), _values(entry, "distribution", key)
    if not c or not d or not all(c) or not all(d):
        return None
    mc, md = _median(c), _median(d)
    assert mc is not None and md is not None
    if meta["higher_is_better"]:
        return mc / md, min(c) / max(d), max(c) / min(d)
    return md / mc, min(d) / max(c), max(d) / min(c)


def markdown(report: dict[str, Any], png_name: str | None = "latest.png") -> str:
    m = report["machine"]
    o = report["options"]
    lines = [
        "# Cargohold vs CNCF Distribution",
        "",
        f"`{report['command']}` — {'quick' if o['quick'] else 'full'} mode, "
        f"{o['runs']} runs per workload and server (alternating order), started "
        f"{report['started']}, took {report['duration_s'] / 60:.1f} min.",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB RAM, "
        f"Linux {m['kernel']}, Python {m['python']}, storage on {m['storage_filesystem']}; "
        f"cargohold {m['packages'].get('cargohold')} ({m['git']}), aiohttp "
        f"{m['packages'].get('aiohttp')}, uvloop {m['packages'].get('uvloop')}; "
        f"{m['tools'].get('docker-registry')}; {m['tools'].get('wrk')}; "
        f"{m['tools'].get('nginx')}; {m['tools'].get('skopeo')}. Load average "
        f"{_load(m.get('loadavg_start'))} at start, {_load(m.get('loadavg_end'))} at the end.",
        "",
        "Cells are the median of the runs, (min-max). C/D is Cargohold's median over "
        "Distribution's: ↑ marks metrics where higher is better, ↓ where lower is better.",
        "",
    ]
    for note in report.get("notes", []):
        lines += [f"> {note}", ""]
    if png_name:
        lines += [f"![Cargohold vs Distribution]({png_name})", ""]

    lines += ["## Targets", "", "| Target | Measured | Goal | Result |", "|---|---|---|---|"]
    for t in report["targets"]:
        status = f"**{t['status']}**" if t["status"] == "MISS" else t["status"]
        note = f" — {t['note']}" if t["note"] else ""
        lines.append(f"| {t['name']} | {t['measured']}{note} | {t['goal']} | {status} |")
    if not report["targets"]:
        lines.append("| (no target applies to the workloads run) | | | |")

    lines += [
        "",
        "## Results",
        "",
        "Cargohold runs with its defaults (`server.workers = auto`: one process per CPU); "
        "the 1-worker column is Cargohold with `--workers 1`, where the workload runs it.",
        "",
        "| Workload | Metric | Cargohold | Distribution | C/D | Cargohold vs limit "
        "| Cargohold 1 worker | C1/D |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in report["workloads"].values():
        own = [k for k in entry["metrics"] if k not in COMMON]
        for i, mk in enumerate(own):
            meta = entry["metrics"][mk]
            arrow = "↑" if meta["higher_is_better"] else "↓"
            unit = f" ({meta['unit']})" if meta["unit"] else ""
            c = _median(_values(entry, "cargohold", mk))
            d = _median(_values(entry, "distribution", mk))
            ratio = f"{c / d:.2f}x" if c is not None and d else "—"
            c1 = _median(_values(entry, "cargohold-1", mk))
            one_worker = (
                f"{_cell(entry, 'cargohold-1', mk, meta['digits'])} | "
                + (f"{c1 / d:.2f}x" if c1 is not None and d else "—")
                if entry["runs"].get("cargohold-1")
                else "— | —"
            )
            fractions = []
            for lk in meta["limits"]:
                found = _limit(report, lk, entry["case"])
                if found and c is not None:
                    name, value = found
                    fractions.append(f"{c / value:.0%} of {_limit_name(name.split('[')[0])}")
            label = f"{entry['title']} {entry['case']}".strip() if i == 0 else ""
            lines.append(
                f"| {label} | {meta['label']}{unit} {arrow} | "
                f"{_cell(entry, 'cargohold', mk, meta['digits'])} | "
                f"{_cell(entry, 'distribution', mk, meta['digits'])} | {ratio} | "
                f"{'; '.join(fractions)} | {one_worker} |"
            )

    lines += [
        "",
        "## Server CPU and memory per run",
        "",
        "Server CPU is utime+stime (children included) from `/proc/PID/stat` over the run; "
        "peak RSS is VmHWM from `/proc/PID/status`, reset before each run with "
        "`echo 5 > /proc/PID/clear_refs` (servers are restarted with empty storage for "
        "every workload case, not every run), summed over a server's processes, so pages "
        "that forked workers share with their parent count once per process; peak memory "
        "counts them once: each process's PSS (`/proc/PID/smaps_rollup`) at the reset "
        "plus its growth to VmHWM. Client CPU is the load generator's own "
        "(this Python process plus wrk/skopeo). Other CPU is the machine's busy time from "
        "`/proc/stat` minus server and client: kernel work charged to no process (loopback "
        "network softirqs, writeback) plus any other job on the machine, so read a "
        "surprising number next to it.",
        "",
        "| Workload | CPU s: Cargohold | CPU s: Distribution | Peak RSS MiB: Cargohold | "
        "Peak RSS MiB: Distribution | Peak memory MiB: Cargohold | "
        "Client CPU s (C / D) | Other CPU s (C / D) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in report["workloads"].values():
        client, other = (
            " / ".join(_num(_median(_values(entry, s, key)), 2) for s in SERVERS)
            for key in ("client_cpu_s", "other_cpu_s")
        )
        lines.append(
            f"| {entry['title']} {entry['case']} | "
            f"{_cell(entry, 'cargohold', 'server_cpu_s', 2)} | "
            f"{_cell(entry, 'distribution', 'server_cpu_s', 2)} | "
            f"{_cell(entry, 'cargohold', 'server_peak_rss_mib', 0)} | "
            f"{_cell(entry, 'distribution', 'server_peak_rss_mib', 0)} | "
            f"{_cell(entry, 'cargohold', 'server_peak_memory_mib', 0)} | {client} | {other} |"
        )

    if report["limits"]:
        lines += [
            "",
            "## Machine limits (same run)",
            "",
            "| Limit | Median | Min | Max | Spread |",
            "|---|---|---|---|---|",
        ]
        for key, lim in report["limits"].items():
            d = 2 if lim["median"] < 10 else 1
            lines.append(
                f"| {_limit_name(key)} | {_num(lim['median'], d)} {lim['unit']} | "
                f"{_num(lim['min'], d)} | {_num(lim['max'], d)} | {lim['spread']:.1%} |"
            )

    errors = [
        (key, server, message)
        for key, entry in report["workloads"].items()
        for server, messages in entry["errors"].items()
        for message in messages
    ]
    if errors:
        lines += ["", "## Failures", "", "| Workload | Server | Error |", "|---|---|---|"]
        for key, server, message in errors:
            lines.append(f"| {key} | {server} | `{message.replace('|', '/')[:600]}` |")

    lines += ["", "## Workloads", ""]
    seen = set()
    for entry in report["workloads"].values():
        if entry["workload"] not in seen:
            seen.add(entry["workload"])
            lines.append(f"- **{entry['workload']}** — {entry['description']}")
    return "\n".join(lines) + "\n"


def chart(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    rows = []
    for entry in report["workloads"].values():
        for mk, meta in entry["metrics"].items():
            if mk in COMMON or not meta.get("chart", True):
                continue
            adv = advantage(entry, mk)
            if adv is not None:
                rows.append((f"{entry['title']} {entry['case']}: {meta['label']}", adv))
    fractions = []
    for entry in report["workloads"].values():
        for mk, meta in entry["metrics"].items():
            c = _median(_values(entry, "cargohold", mk))
            for lk in meta["limits"]:
                found = _limit(report, lk, entry["case"])
                if found and c is not None:
                    fractions.append(
                        (f"{entry['title']} {entry['case']} / {LABELS.get(lk, lk)}", c / found[1])
                    )
    height = max(4.0, 0.32 * max(len(rows), 1) + 1.5)
    fig, (ax1, ax2) = plt.subplots(
        1, 2, figsize=(15, height), gridspec_kw={"width_ratios": [3, 2]}, dpi=80
    )
    if rows:
        labels = [r[0] for r in rows][::-1]
        med = [r[1][0] for r in rows][::-1]
        low = [r[1][0] - r[1][1] for r in rows][::-1]
        high = [r[1][2] - r[1][0] for r in rows][::-1]
        colors = ["#2e7d32" if v >= 1 else "#c62828" for v in med]
        y = range(len(rows))
        ax1.barh(y, med, xerr=[low, high], color=colors, capsize=2, ecolor="#555")
        ax1.set_yticks(list(y), labels, fontsize=8)
        ax1.set_xscale("log")
        ax1.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax1.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax1.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax1.axvline(1, color="black", lw=1)
        for yi, v in zip(y, med, strict=True):
            ax1.text(v, yi, f" {v:.2f}x", va="center", fontsize=7)
        ax1.set_xlabel(
            "Cargohold advantage over Distribution (>1 = Cargohold better; bars: min-max)"
        )
        ax1.set_title("Cargohold vs Distribution (median of runs)")
    if fractions:
        labels = [f[0] for f in fractions][::-1]
        values = [100 * f[1] for f in fractions][::-1]
        y = range(len(fractions))
        ax2.barh(y, values, color="#1565c0")
        ax2.set_yticks(list(y), labels, fontsize=8)
        ax2.axvline(80, color="grey", lw=1, ls="--")
        for yi, v in zip(y, values, strict=True):
            ax2.text(v, yi, f" {v:.0f}%", va="center", fontsize=7)
        ax2.set_xlabel("Cargohold as % of the machine limit")
        ax2.set_title("Fraction of machine limits")
    else:
        ax2.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_outputs(report: dict[str, Any], out: Path, name: str = "latest") -> list[Path]:
    """``NAME.json``, ``NAME.md`` and ``NAME.png`` in ``out``."""
    json_path, md_path, png_path = out / f"{name}.json", out / f"{name}.md", out / f"{name}.png"
    json_path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    has_png = chart(report, png_path)
    if not has_png:
        report.setdefault("notes", []).append("matplotlib is not installed: no chart")
    md_path.write_text(markdown(report, png_path.name if has_png else None))
    return [json_path, md_path] + ([png_path] if has_png else [])


if __name__ == "__main__":
    source = Path(
        sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results/latest.json"
    )
    for p in write_outputs(json.loads(source.read_text()), source.parent, source.stem):
        print(p)
