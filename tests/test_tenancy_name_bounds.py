"""Lookups by a name no owner, registry or user can have find nothing without asking
storage: a 1,000-character user name (``make fuzz``, a member PUT) was a path component too
long for the local file system, and the driver's error became a 503."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.local import LocalDriver
from registry_core.tenancy import MAX_SLUG, NotFoundRecord, TenancyStore, is_slug

LONG = "x" * 1000


@pytest.fixture
async def tenancy(tmp_path: Path) -> TenancyStore:
    store = TenancyStore(LocalDriver(str(tmp_path / "store")))
    await store.create_user("alice", "a long enough password")
    await store.create_owner("acme")
    await store.create_registry("acme", "prod")
    return store


def test_a_name_is_at_most_64_characters_and_nothing_around_it() -> None:
    assert is_slug("a" * MAX_SLUG)
    assert not is_slug("a" * (MAX_SLUG + 1))
    assert not is_slug("alice\n")  # ``$`` would have let a trailing newline through
    assert not is_slug("")


@pytest.mark.parametrize("name", [LONG, "alice\n", "x" * 256])
async def test_lookups_by_impossible_names_find_nothing(tenancy: TenancyStore, name: str) -> None:
    assert await tenancy.get_user(name) is None
    assert await tenancy.get_owner(name) is None
    assert await tenancy.get_registry("acme", name) is None
    assert await tenancy.get_member("acme", "prod", name) is None
    with pytest.raises(NotFoundRecord):
        await tenancy.add_member("acme", "prod", name, "read")
    with pytest.raises(NotFoundRecord):
        await tenancy.remove_member("acme", None, name)
    assert await tenancy.get_user("alice") is not None  # the real ones still are found
