"""schemathesis (``--checks all``) against ``/api/v1/openapi.json``, logged in as a superuser.

Every operation, every phase (examples, coverage, fuzzing, stateful): schema-valid
requests are accepted, schema-violating ones refused with a documented 4xx, every
status, header and body is the documented one, and nothing is a 5xx. The two
answers JSON Schema cannot express are listed, with their reasons, in
``tests/fuzz/schemathesis.toml``. The superuser may not delete or demote itself
(it is the last one), so the run cannot lock itself out.

``FUZZ_PROFILE=ci`` runs a bounded example count with a fixed seed (reproducible);
``long`` runs more examples with a fresh seed each time.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz.support import PROFILE, Target, start_target
from tests.helpers.tenants import Seeder

CONFIG = Path(__file__).parent / "fuzz" / "schemathesis.toml"
EXAMPLES = int(os.environ.get("FUZZ_OPENAPI_EXAMPLES") or (6 if PROFILE == "ci" else 150))
SEED = "20261205" if PROFILE == "ci" else str(secrets.randbelow(2**31))


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    for running in start_target(tmp_path_factory, "fuzz-openapi"):
        Seeder(running.server.storage_url).user("victim")  # see schemathesis.toml
        yield running


def run_schemathesis(target: Target, workdir: Path, *options: str) -> None:
    """One schemathesis run as the superuser; fails with its report on any failure."""
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(CONFIG),
        "run",
        f"{target.url}/api/v1/openapi.json",
        "--checks",
        "all",
        "--auth",
        f"{target.root.username}:{target.root.secret}",
        "--seed",
        SEED,
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--no-color",
        "--request-timeout",
        "60",
        *options,
    ]
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    done = subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, timeout=1800
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-20_000:]
    # Every operation of the document was tested (none left out by a loading problem).
    selected = re.search(r"Operations:\s+(\d+) selected / (\d+) total", output)
    assert selected is not None and selected[1] == selected[2], output[-3000:]
    assert f"Tested: {selected[2]}" in output, output[-3000:]
    log = target.new_log()
    assert "Traceback" not in log, log[-5000:]
    # Logged in throughout: the superuser it ran as is still there, still a superuser.
    me = target.request("GET", "/api/v1/user", auth=target.root)
    assert me.status_code == 200 and me.json()["superuser"] is True


def test_schema_boundary_cases_conform(target: Target, tmp_path: Path) -> None:
    """The coverage phase: each constraint's edges, inside and outside (a fixed set)."""
    run_schemathesis(target, tmp_path, "--phases", "examples,coverage")


def test_random_requests_and_sequences_conform(target: Target, tmp_path: Path) -> None:
    """The fuzzing and stateful phases: random valid and invalid requests, and chains of
    operations linked by what one returns and the next takes."""
    run_schemathesis(
        target, tmp_path, "--phases", "fuzzing,stateful", "--max-examples", str(EXAMPLES)
    )
