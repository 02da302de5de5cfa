"""Version ordering per ecosystem and the OSV range pseudocode, checked against the real tools.

dpkg's ordering is checked against ``dpkg --compare-versions`` itself on this Debian
machine; apk, PEP 440 and semver against their documented orderings.
"""

from __future__ import annotations

import subprocess

import pytest

from registry_core.scanning.osv import Advisory, Range, advisories_of, cvss_rating, is_affected
from registry_core.scanning.versions import compare_apk, compare_dpkg, compare_pypi, compare_semver

DPKG_PAIRS = [
    ("1.0", "1.0"),
    ("1.0", "1.0-1"),
    ("1:1.0", "2.0"),
    ("1.0~rc1", "1.0"),
    ("1.0~~", "1.0~"),
    ("2.36-9+deb12u3", "2.36-9+deb12u7"),
    ("1:2.38.1-5+b1", "2.38.1-5+deb12u1"),
    ("2.38.1-5", "2.38.1-5+deb12u1"),
    ("3.0.11-1~deb12u2", "3.0.11-1~deb12u1"),
    ("3.0.11-1~deb12u2", "3.0.13-1~deb12u1"),
    ("1.2.13.dfsg-1", "1.2.13-1"),
    ("1.0a", "1.0+"),
    ("1.0.0", "1.0"),
    ("0:1.0", "1.0"),
    ("10", "9"),
    ("1.0-1ubuntu1", "1.0-1"),
]


@pytest.mark.parametrize(("a", "b"), DPKG_PAIRS)
def test_dpkg_order_agrees_with_dpkg_itself(a: str, b: str) -> None:
    def dpkg(op: str) -> bool:
        return subprocess.run(["dpkg", "--compare-versions", a, op, b], check=False).returncode == 0

    expected = -1 if dpkg("lt") else (0 if dpkg("eq") else 1)
    assert compare_dpkg(a, b) == expected


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("1.36.1-r29", "1.36.1-r30"),
        ("3.3.1-r0", "3.3.2-r0"),
        ("1.0_rc1", "1.0"),
        ("1.0_alpha1", "1.0_beta1"),
        ("1.0", "1.0_p1"),
        ("1.0", "1.0a"),
        ("1.2", "1.10"),
        ("1.01", "1.1"),
        ("2.0_pre2", "2.0_rc1"),
    ],
)
def test_apk_order(lower: str, higher: str) -> None:
    assert compare_apk(lower, higher) == -1
    assert compare_apk(higher, lower) == 1
    assert compare_apk(lower, lower) == 0


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("1.0rc1", "1.0"),
        ("1.0", "1.0.post1"),
        ("1.0.dev1", "1.0a1"),
        ("2.2.1", "2.10"),
        ("2.0", "1!0.1"),
    ],
)
def test_pypi_order_is_pep_440(lower: str, higher: str) -> None:
    assert compare_pypi(lower, higher) == -1


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("1.0.0-alpha", "1.0.0-alpha.1"),
        ("1.0.0-alpha.1", "1.0.0-alpha.beta"),
        ("1.0.0-beta.2", "1.0.0-beta.11"),
        ("1.0.0-rc.1", "1.0.0"),
        ("4.17.20", "4.17.21"),
        ("7.23.0", "7.23.2"),
    ],
)
def test_semver_precedence(lower: str, higher: str) -> None:
    assert compare_semver(lower, higher) == -1
    assert compare_semver("1.0.0+build.5", "1.0.0") == 0


def advisory(
    ecosystem: str, *events: tuple[str, str], versions: list[str] | None = None
) -> Advisory:
    return Advisory(
        id="X",
        ecosystem=ecosystem,
        package="p",
        ranges=[Range(type="ECOSYSTEM", events=list(events))],
        versions=versions or [],
    )


def test_ranges_open_at_introduced_and_close_at_fixed() -> None:
    two_windows = advisory(
        "PyPI", ("introduced", "1.0"), ("fixed", "1.5"), ("introduced", "2.0"), ("fixed", "2.5")
    )
    affected = {
        v: is_affected(two_windows, v)
        for v in ("0.9", "1.0", "1.4", "1.5", "1.7", "2.0", "2.4", "2.5")
    }
    assert affected == {
        "0.9": False,
        "1.0": True,
        "1.4": True,
        "1.5": False,
        "1.7": False,
        "2.0": True,
        "2.4": True,
        "2.5": False,
    }


def test_last_affected_includes_its_version_and_limit_excludes_its_own() -> None:
    last = advisory("Debian:12", ("introduced", "0"), ("last_affected", "5.36.0-7"))
    limited = advisory("Debian:12", ("introduced", "0"), ("limit", "1.12-1"))
    assert (is_affected(last, "5.36.0-7"), is_affected(last, "5.36.0-7+deb12u1")) == (True, False)
    assert (is_affected(limited, "1.11-1"), is_affected(limited, "1.12-1")) == (True, False)


def test_listed_versions_match_without_ranges() -> None:
    assert is_affected(advisory("npm", versions=["1.2.3"]), "1.2.3")
    assert not is_affected(advisory("npm", versions=["1.2.3"]), "1.2.4")


def test_git_ranges_are_skipped_and_withdrawn_records_yield_nothing() -> None:
    git_only = {
        "id": "G",
        "affected": [
            {
                "package": {"ecosystem": "PyPI", "name": "p"},
                "ranges": [{"type": "GIT", "repo": "https://x", "events": [{"introduced": "0"}]}],
            }
        ],
    }
    withdrawn = {**git_only, "withdrawn": "2024-01-01T00:00:00Z"}
    assert advisories_of(git_only) == []
    assert advisories_of(withdrawn) == []


def test_cvss_vectors_give_score_and_rating() -> None:
    assert cvss_rating("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H") == ("critical", 9.8)
    assert cvss_rating("CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:N/VA:N/SC:N/SI:N/SA:N") == (
        "high",
        8.7,
    )
    assert cvss_rating("CVSS:3.1/garbage") is None
