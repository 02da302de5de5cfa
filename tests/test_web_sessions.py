"""Website sessions in storage (registry_core.sessions), used as a library."""

from __future__ import annotations

from pathlib import Path

from drivers.local import LocalDriver
from registry_core.sessions import SessionStore, csrf_matches, csrf_token
from registry_core.storage import layout


async def test_an_expired_session_is_refused(tmp_path: Path) -> None:
    store = SessionStore(LocalDriver(str(tmp_path)), lifetime=-1)
    cookie, _ = await store.create("ann", "hash")
    assert await store.get(cookie) is None


async def test_a_live_session_names_its_user(tmp_path: Path) -> None:
    store = SessionStore(LocalDriver(str(tmp_path)), lifetime=60)
    cookie, _ = await store.create("ann", "hash")
    record = await store.get(cookie)
    assert record is not None and record.user == "ann"


async def test_ending_a_session_removes_it(tmp_path: Path) -> None:
    store = SessionStore(LocalDriver(str(tmp_path)), lifetime=60)
    cookie, _ = await store.create("ann", "hash")
    await store.end(cookie)
    assert await store.get(cookie) is None


async def test_the_purge_deletes_expired_sessions_only(tmp_path: Path) -> None:
    driver = LocalDriver(str(tmp_path))
    expired = SessionStore(driver, lifetime=-1)
    live = SessionStore(driver, lifetime=60)
    for _ in range(3):
        await expired.create("old", "hash")
    cookie, _ = await live.create("new", "hash")
    assert await live.purge_expired() == 3
    assert len(await driver.list(layout.SESSIONS)) == 1
    assert await live.get(cookie) is not None


def test_the_csrf_token_belongs_to_its_cookie() -> None:
    assert csrf_matches("cookie-a", csrf_token("cookie-a"))
    assert not csrf_matches("cookie-b", csrf_token("cookie-a"))
