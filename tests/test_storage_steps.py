"""storage.steps: grouped small operations give the same outcomes on every driver.

The local driver runs a call's groups in one worker-thread hop; the memory driver and a
wrapper that does not pass ``run_steps`` on (CountingDriver) fall back to concurrent
calls, group after group. Each case runs against all three.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from drivers.local import LocalDriver
from drivers.memory import MemoryDriver
from registry_core.lifecycle.counting import CountingDriver
from registry_core.storage import steps
from registry_core.storage.driver import FileInfo, PathNotFound, StorageError
from registry_core.storage.steps import run_steps


@pytest.fixture(params=["local", "memory", "counted-local"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "memory":
        return MemoryDriver(f"steps-{id(tmp_path)}")
    local = LocalDriver(str(tmp_path / "store"))
    return CountingDriver(local) if request.param == "counted-local" else local


async def test_each_step_has_its_methods_outcome_and_not_found_is_an_outcome(driver: Any) -> None:
    await driver.write("a/present", b"here")
    (outcomes,) = await run_steps(
        driver,
        [
            [
                steps.read("a/present"),
                steps.read("a/absent"),
                steps.stat("a/present"),
                steps.stat("a/absent"),
                steps.write("b/new", b"1"),
                steps.write_if_absent("a/present", b"other"),
                steps.write_if_absent("c/created", b"2"),
            ]
        ],
    )
    read, missing_read, info, missing_stat, written, kept, created = outcomes
    assert read == b"here"
    assert isinstance(missing_read, PathNotFound)
    assert isinstance(info, FileInfo) and info.size == 4
    assert isinstance(missing_stat, PathNotFound)
    assert written is None
    assert kept is False and created is True
    assert await driver.read("a/present") == b"here"
    assert await driver.read("b/new") == b"1"
    assert await driver.read("c/created") == b"2"


async def test_a_group_sees_what_the_groups_before_it_wrote(driver: Any) -> None:
    first, second, third = await run_steps(
        driver,
        [
            [steps.stat("x/object")],
            [steps.write("x/object", b"v1"), steps.write("x/other", b"o")],
            [steps.read("x/object"), steps.stat("x/other")],
        ],
    )
    assert isinstance(first[0], PathNotFound)
    assert second == [None, None]
    assert third[0] == b"v1" and third[1].size == 1


async def test_an_error_other_than_not_found_fails_the_call_and_stops_later_groups(
    driver: Any,
) -> None:
    await driver.write("file", b"an object, not a folder")
    with pytest.raises(StorageError):
        await run_steps(
            driver,
            [
                [steps.write("file/below", b"cannot be: its parent is an object")],
                [steps.write("after", b"never written")],
            ],
        )
    with pytest.raises(PathNotFound):
        await driver.read("after")


def test_the_counting_wrapper_counts_each_step_as_its_own_call(tmp_path: Path) -> None:
    counted = CountingDriver(LocalDriver(str(tmp_path)))
    asyncio.run(run_steps(counted, [[steps.write("a", b"1"), steps.read("a")], [steps.stat("a")]]))
    assert counted.counts == {"write": 1, "read": 1, "stat": 1}


async def test_a_local_driver_subclass_that_overrides_an_operation_sees_every_step(
    tmp_path: Path,
) -> None:
    seen: list[str] = []

    class Watching(LocalDriver):
        async def write(self, path: str, data: bytes) -> None:
            seen.append(path)
            await super().write(path, data)

    driver = Watching(str(tmp_path))
    await run_steps(driver, [[steps.write("a", b"1")], [steps.write("b", b"2"), steps.read("a")]])
    assert seen == ["a", "b"]
