"""Hypothesis strategies that build valid documents and then break them.

Structure-aware first (a valid manifest, index or request body with one field
replaced, removed or added), byte-level second (invalid UTF-8, a duplicated key,
deep nesting, a flipped bit, a cut), as the fuzzing section of STYLE.md asks.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import strategies as st

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)

odd_values = st.one_of(
    st.recursive(
        JSON_SCALARS,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=10), children, max_size=4)
        ),
        max_leaves=12,
    ),
    st.sampled_from([10**30, -(10**30), 2**63, 2**64, -1, 0, 1e308, -1e308, "", "\x00"]),
    st.integers(min_value=1_000, max_value=300_000).map(lambda n: "x" * n),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=200),
)
"""Any JSON value, weighted towards the ones parsers trip over."""


def paths_of(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside *document* (dict keys and list positions)."""
    found = [prefix] if prefix else []
    if isinstance(document, dict):
        for key, value in document.items():
            found += paths_of(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += paths_of(value, (*prefix, index))
    return found


def _copy(document: Any) -> Any:
    return json.loads(json.dumps(document))


def _parent(document: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        document = document[step]
    return document


@st.composite
def mutated(draw: st.DrawFn, document: dict[str, Any]) -> Any:
    """*document* with one value replaced, one field removed, or one field added."""
    document = _copy(document)
    paths = paths_of(document)
    kind = draw(st.sampled_from(["replace", "remove", "add", "replace-root"]))
    if kind == "replace-root":
        return draw(odd_values)
    path = draw(st.sampled_from(paths))
    parent = _parent(document, path)
    if kind == "replace":
        parent[path[-1]] = draw(odd_values)
    elif kind == "remove":
        del parent[path[-1]]
    else:
        target = parent if isinstance(parent, dict) else document
        target[draw(st.text(max_size=12))] = draw(odd_values)
    return document


def encode(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False, allow_nan=False).encode(
        "utf-8", "surrogatepass"
    )


@st.composite
def broken_bytes(draw: st.DrawFn, body: bytes) -> bytes:
    """*body* damaged below the JSON level."""
    kind = draw(
        st.sampled_from(
            ["invalid-utf8", "duplicate-key", "deep", "bit-flip", "truncate", "garbage-tail"]
        )
    )
    if kind == "invalid-utf8":
        at = draw(st.integers(0, len(body)))
        bad = draw(st.sampled_from([b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf8\x88\x80\x80"]))
        return body[:at] + bad + body[at:]
    if kind == "duplicate-key":
        key = draw(st.sampled_from([b"schemaVersion", b"mediaType", b"config", b"layers"]))
        value = draw(st.sampled_from([b"2", b'"x"', b"{}", b"[]", b"null"]))
        return body.replace(b"{", b'{"' + key + b'":' + value + b",", 1)
    if kind == "deep":
        depth = draw(st.integers(65, 20_000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        return body.replace(b"{", b'{"deep":' + opener * depth + b"1" + closer * depth + b",", 1)
    if kind == "bit-flip":
        at = draw(st.integers(0, max(0, len(body) - 1)))
        bit = draw(st.integers(0, 7))
        return body[:at] + bytes([body[at] ^ (1 << bit)]) + body[at + 1 :]
    if kind == "truncate":
        return body[: draw(st.integers(0, max(0, len(body) - 1)))]
    return body + draw(st.binary(min_size=1, max_size=50))


def broken_document(document: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """A damaged encoding of *document*: structurally mutated, byte-broken, or both."""
    structural = mutated(document).map(encode)
    return st.one_of(
        structural,
        broken_bytes(encode(document)),
        structural.flatmap(broken_bytes),
    )


text_any = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=300)
"""Arbitrary text (any code point but surrogates, which no client can send)."""

digests = st.one_of(
    st.from_regex(r"\Asha256:[a-f0-9]{64}\Z"),
    st.from_regex(r"\A[a-z0-9]{1,10}(?:[+._-][a-z0-9]{1,5})?:[a-zA-Z0-9=_-]{1,150}\Z"),
    st.from_regex(r"\Asha256:[a-fA-F0-9]{0,70}\Z"),
    st.from_regex(r"\Asha512:[a-f0-9]{0,130}\Z"),
    text_any,
)
"""Well-formed but absent digests, malformed ones, and plain text."""

_SENDABLE_HEADER = re.compile(r"^\S[^\r\n]*$|^$")
_SENDABLE_HEADER_BYTES = re.compile(rb"^\S[^\r\n]*$|^$")


def sendable(value: str | bytes) -> bool:
    """Whether an HTTP client library will send *value* as a header (no CR/LF, no
    leading whitespace); raw sockets cover the rest (tests/test_fuzz_malformed_http.py)."""
    if isinstance(value, bytes):
        return bool(_SENDABLE_HEADER_BYTES.fullmatch(value))
    return bool(_SENDABLE_HEADER.fullmatch(value))


header_text = (
    text_any.map(lambda text: text.encode("utf-8").decode("latin-1"))
    .map(lambda text: text.lstrip(" \t\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0"))
    .filter(sendable)
)
"""Arbitrary header values an HTTP client can still send (UTF-8 bytes, read as latin-1)."""
