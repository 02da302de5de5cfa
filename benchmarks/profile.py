"""``--profile DIR``: py-spy records the Cargohold server of every workload case.

The recorder attaches to the server (and its worker processes) after the case's
setup and stops when the case ends, so the profile covers the measured runs only
(while Distribution runs, Cargohold is idle, and py-spy leaves idle threads out).
It writes ``DIR/NN-workload[case].txt`` (py-spy's raw collapsed stacks, for
``flamegraph.pl`` or speedscope) and ``DIR/NN-workload[case].md``: where the busy
samples went, by leaf function (self) and by function anywhere on the stack
(inclusive). Sampling slows the server a little: use the profile to explain a
figure, take the figures from a run without ``--profile``.

``python -m benchmarks.profile FILE.txt`` prints the summary of a raw file again.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

TOP = 25
_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def start(pid: int, raw_path: Path) -> subprocess.Popen[bytes] | None:
    exe = py_spy()
    if exe is None:
        return None
    log = open(raw_path.with_suffix(".log"), "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--nolineno",
            "--format",
            "raw",
            "--output",
            str(raw_path),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    return proc


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGINT makes py-spy write its output and exit."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


_FRAME = re.compile(r"^(?P<fn>.*) \((?P<file>[^()]*)\)$")
OWN = ("registry_server/", "registry_core/", "drivers/")
# Where a thread waits: py-spy counts it as running, it is not. A pool thread waiting for
# work (asyncio's executor; the local driver's own threads, blocked in the queue's get),
# and the parent of `--workers` processes waiting for a child to exit. (A builtin that
# drivers/threads.py's loop calls directly, with no Python frame of its own, would be
# counted idle too: the local driver's hops run Python functions, except read_stream's.)
IDLE_LEAVES = {
    ("_worker", "concurrent/futures/thread.py"),
    ("_work", "drivers/threads.py"),
    ("run_workers", "registry_server/workers.py"),
}


def _split(frame: str) -> tuple[str, str]:
    found = _FRAME.match(frame)
    return (found["fn"], found["file"]) if found else (frame, "")


def _package(file: str) -> str:
    """``aiohttp/web_protocol.py`` -> ``aiohttp``; ``selectors.py`` -> ``selectors``."""
    head = file.split("/", 1)[0]
    return head.removesuffix(".py") if head else "?"


def summarize(raw_path: Path, title: str = "") -> str:
    """Busy samples by package and by leaf function (self time), and Cargohold's own
    functions anywhere on the stack (inclusive)."""
    self_time: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = idle = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        found = _LINE.match(line.strip())
        if not found:
            continue
        count = int(found["count"])
        frames = [
            _split(f)
            for f in found["stack"].split(";")
            if f and not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        if frames[-1] in IDLE_LEAVES:
            idle += count
            continue
        total += count
        fn, file = frames[-1]
        self_time[f"{fn} ({file})"] += count
        packages[_package(file)] += count
        for fn, file in set(frames):
            if file.startswith(OWN) and file != "registry_server/cli.py":  # cli: the whole run
                inclusive[f"{fn} ({file})"] += count
    lines = [f"# py-spy profile: {title or raw_path.stem}", ""]
    if not total:
        return "\n".join([*lines, "No busy samples (py-spy saw only idle threads).", ""])
    lines += [
        f"{total} busy samples at 100 Hz, ~{total / 100:.1f} s of thread time (py-spy leaves "
        f"idle threads out; {idle} more samples of pool threads waiting for work are left out "
        "too). Shares are of the busy samples.",
        "",
        "## By package (of the function running)",
        "",
        "| share | samples | package |",
        "|---|---|---|",
    ]
    lines += [f"| {n / total:.1%} | {n} | `{k}` |" for k, n in packages.most_common(12)]
    lines += [
        "",
        "## Self time (leaf function)",
        "",
        "| share | samples | function |",
        "|---|---|---|",
    ]
    lines += [f"| {n / total:.1%} | {n} | `{f}` |" for f, n in self_time.most_common(TOP)]
    lines += [
        "",
        "## Cargohold's functions, inclusive (anywhere on the stack)",
        "",
        "| share | samples | function |",
        "|---|---|---|",
    ]
    lines += [f"| {n / total:.1%} | {n} | `{f}` |" for f, n in inclusive.most_common(TOP)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(summarize(Path(name)))
