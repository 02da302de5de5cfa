"""Untrusted JSON documents checked before any parser walks them.

Owns the limits every client-supplied JSON body (manifests, management API
bodies) must meet before it is decoded: valid UTF-8, a bounded nesting depth
(so no decoder ever recurses until Python's stack gives out) and, for documents
that are stored and read back by other parsers, no duplicate keys. It raises
``ValueError`` with a message fit for a client and never decodes into types:
that stays with the caller, which maps the message to its own error code.
"""

from __future__ import annotations

import json
import re
from array import array
from itertools import accumulate
from typing import Any

MAX_DEPTH = 64
"""Deeper than any manifest or API body has reason to be, far from the recursion limit."""

# Strings are removed before counting brackets (a "[" inside a string is text): escape
# pairs first, so that every remaining quote opens or closes a string, then every other
# piece between quotes. All of it runs in C: a regular expression over whole strings
# costs seconds on a 4 MiB body of short strings.
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
# Opening brackets count +1 and closing ones -1 (0xFF as a signed byte).
_DEPTH_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def nesting_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in *body* (JSON text, possibly invalid)."""
    if b"\\" in body:
        body = _ESCAPE.sub(b"", body)
    outside_strings = b"".join(body.split(b'"')[::2])
    steps = outside_strings.translate(_DEPTH_STEP, _NOT_BRACKETS)
    return max(accumulate(array("b", steps)), default=0)


def check_document(body: bytes, *, max_depth: int = MAX_DEPTH, unique_keys: bool = False) -> None:
    """Raise ``ValueError`` unless *body* is UTF-8 JSON text no deeper than *max_depth*.

    With *unique_keys*, an object naming one key twice is refused too: parsers disagree
    on which value wins, so a document that means two things must not be stored.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not valid UTF-8 (byte {exc.start})") from None
    # Cheap first: a body with few brackets cannot be deep.
    if body.count(b"[") + body.count(b"{") > max_depth and nesting_depth(body) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    if unique_keys:
        try:
            json.loads(text, object_pairs_hook=_unique_object)
        except _DuplicateKey as exc:
            raise ValueError(f"duplicate key {exc.key!r} in a JSON object") from None
        except (ValueError, RecursionError):
            return  # not JSON at all: the caller's decoder says why, in its own words


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key[:100]


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return found
