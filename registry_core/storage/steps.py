"""Several small storage operations as one call: one worker-thread hop on the local driver.

A manifest PUT checks its blobs, writes its revision, checks them again, writes its tag
and confirms it (manifests.py). Each phase is a handful of tiny operations on independent
objects, and some phases must be visible before the next starts (the GC-safety order of
lifecycle/gc.py). Run as ``asyncio.gather`` of coroutines, every operation is an asyncio
task with its own wake-ups, which cost more CPU than the syscalls themselves.

:func:`run_steps` takes *groups* of steps: the groups run one after the other (a group
starts only once every step of the one before it has finished), the steps of a group in
any order. A driver with a ``run_steps`` method of that contract does it all in one call
(the local driver: one hop, every step in the order given, which is one of the orders
allowed); any other driver, and any wrapper that does not pass the method on, gets each
group as concurrent calls of its ordinary methods: the same outcomes, with the object
stores' concurrency. A step's "not found" is its outcome (the ``PathNotFound``
instance), not an error of the call; any other error fails the whole call, and the
groups after the failing one do not run.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal, NamedTuple

from .driver import PathNotFound, StorageDriver

Operation = Literal["read", "stat", "write", "write_if_absent"]


class Step(NamedTuple):
    """One small operation: a driver method's name, its path and (for writes) its data."""

    operation: Operation
    path: str
    data: bytes = b""


def read(path: str) -> Step:
    return Step("read", path)


def stat(path: str) -> Step:
    return Step("stat", path)


def write(path: str, data: bytes) -> Step:
    return Step("write", path, data)


def write_if_absent(path: str, data: bytes) -> Step:
    return Step("write_if_absent", path, data)


async def run_steps(driver: StorageDriver, groups: list[list[Step]]) -> list[list[Any]]:
    """Each step's outcome, by group: what its driver method returns, or ``PathNotFound``."""
    batched = getattr(driver, "run_steps", None)
    if batched is not None:
        return await batched(groups)
    outcomes: list[list[Any]] = []
    for group in groups:
        if len(group) == 1:  # no task for a lone step
            outcomes.append([await _one(driver, group[0])])
            continue
        results = await asyncio.gather(*(_one(driver, step) for step in group))
        outcomes.append(list(results))
    return outcomes


async def _one(driver: StorageDriver, step: Step) -> Any:
    try:
        if step.operation == "read":
            return await driver.read(step.path)
        if step.operation == "stat":
            return await driver.stat(step.path)
        if step.operation == "write":
            return await driver.write(step.path, step.data)
        if step.operation == "write_if_absent":
            return await driver.write_if_absent(step.path, step.data)
    except PathNotFound as exc:
        return exc
    raise ValueError(f"unknown storage step {step.operation!r}")
