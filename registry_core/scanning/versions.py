"""Version ordering per vulnerability ecosystem: Debian/Ubuntu dpkg, Alpine apk, PyPI, npm.

OSV ranges are evaluated by each ecosystem's own ordering. PyPI uses PEP 440 through
``packaging``; dpkg (epochs, ``~``, letters before non-letters), apk (numbers, letter,
``_alpha``..``_p`` suffixes, ``-rN``) and npm semver (pre-releases sort before their
release) are small, thoroughly tested comparators here because no maintained package
offers them without a native dependency. This module never raises on odd input from
an image: a version it cannot parse compares as a string, so a scan goes on.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from packaging.version import InvalidVersion, Version

Comparator = Callable[[str, str], int]


def _cmp(a: object, b: object) -> int:
    return (a > b) - (a < b)  # type: ignore[operator]


# -- dpkg ---------------------------------------------------------------------------------


def _dpkg_order(char: str) -> int:
    if char == "~":
        return -1
    if char.isdigit():
        return 0
    if char.isalpha():
        return ord(char)
    return ord(char) + 256


def _dpkg_part(a: str, b: str) -> int:
    """dpkg's verrevcmp: alternate non-digit and digit runs."""
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _dpkg_order(a[i]) if i < len(a) else 0
            bc = _dpkg_order(b[j]) if j < len(b) else 0
            if ac != bc:
                return _cmp(ac, bc)
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = _cmp(a[i], b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def _dpkg_split(version: str) -> tuple[int, str, str]:
    version = version.strip()
    epoch = 0
    if ":" in version:
        head, version = version.split(":", 1)
        epoch = int(head) if head.isdigit() else 0
    upstream, _, revision = version.rpartition("-")
    if not upstream:
        upstream, revision = revision, ""
    return epoch, upstream, revision


def compare_dpkg(a: str, b: str) -> int:
    """dpkg --compare-versions: -1, 0 or 1."""
    ea, ua, ra = _dpkg_split(a)
    eb, ub, rb = _dpkg_split(b)
    return _cmp(ea, eb) or _dpkg_part(ua, ub) or _dpkg_part(ra, rb)


# -- apk ----------------------------------------------------------------------------------

_APK_SUFFIX = {
    "alpha": -4,
    "beta": -3,
    "pre": -2,
    "rc": -1,
    "cvs": 1,
    "svn": 2,
    "git": 3,
    "hg": 4,
    "p": 5,
}
_APK = re.compile(
    r"^(?P<nums>\d+(?:\.\d+)*)(?P<letter>[a-z]?)(?P<suffixes>(?:_[a-z]+\d*)*)(?:~[0-9a-f]+)?(?:-r(?P<rel>\d+))?$"
)


def _apk_key(version: str) -> tuple[object, ...] | None:
    match = _APK.fullmatch(version.strip())
    if match is None:
        return None
    suffixes = []
    for part in re.findall(r"_([a-z]+)(\d*)", match["suffixes"] or ""):
        name, number = part
        if name not in _APK_SUFFIX:
            return None
        suffixes.append((_APK_SUFFIX[name], int(number or 0)))
    suffixes.append((0, 0))  # no suffix sorts between pre-releases and post-releases
    return (match["nums"].split("."), match["letter"], suffixes, int(match["rel"] or 0))


def _apk_nums(a: list[str], b: list[str]) -> int:
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        # apk compares later components with a leading zero as decimal fractions.
        if index > 0 and (x.startswith("0") or y.startswith("0")):
            result = _cmp(x.rstrip("0"), y.rstrip("0"))
        else:
            result = _cmp(int(x), int(y))
        if result:
            return result
    return _cmp(len(a), len(b))


def compare_apk(a: str, b: str) -> int:
    """apk version comparison: -1, 0 or 1 (unparseable versions compare as strings)."""
    ka, kb = _apk_key(a), _apk_key(b)
    if ka is None or kb is None:
        return _cmp(a, b)
    return (
        _apk_nums(ka[0], kb[0])  # type: ignore[arg-type]
        or _cmp(ka[1], kb[1])
        or _cmp(ka[2], kb[2])
        or _cmp(ka[3], kb[3])
    )


# -- PyPI ---------------------------------------------------------------------------------


def compare_pypi(a: str, b: str) -> int:
    try:
        return _cmp(Version(a), Version(b))
    except InvalidVersion:
        return _cmp(a, b)


def normalize_pypi_name(name: str) -> str:
    """PEP 503 normalisation: ``Foo_Bar.baz`` and ``foo-bar-baz`` are one project."""
    return re.sub(r"[-_.]+", "-", name).lower()


# -- semver (npm, OSV SEMVER ranges) ------------------------------------------------------

_SEMVER = re.compile(
    r"^v?(?P<major>\d+)(?:\.(?P<minor>\d+))?(?:\.(?P<patch>\d+))?"
    r"(?:-(?P<pre>[0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$"
)


def _semver_key(version: str) -> tuple[object, ...] | None:
    match = _SEMVER.fullmatch(version.strip())
    if match is None:
        return None
    core = (int(match["major"]), int(match["minor"] or 0), int(match["patch"] or 0))
    pre = match["pre"]
    if pre is None:
        return (core, 1, ())
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (core, 0, ids)


def compare_semver(a: str, b: str) -> int:
    """Semantic Versioning 2.0 precedence (build metadata ignored)."""
    ka, kb = _semver_key(a), _semver_key(b)
    if ka is None or kb is None:
        return _cmp(a, b)
    return _cmp(ka, kb)


def comparator(ecosystem: str) -> Comparator | None:
    """The ordering of an OSV ecosystem (``Debian:12`` -> dpkg), or None when unknown."""
    base = ecosystem.split(":", 1)[0]
    return _COMPARATORS.get(base)


_COMPARATORS: dict[str, Comparator] = {
    "Debian": compare_dpkg,
    "Ubuntu": compare_dpkg,
    "Alpine": compare_apk,
    "PyPI": compare_pypi,
    "npm": compare_semver,
}


def sort_key(ecosystem: str) -> Callable[[str], object]:
    compare = comparator(ecosystem) or (lambda a, b: _cmp(a, b))
    return functools.cmp_to_key(compare)
