"""registry_core.jsondoc: the checks every untrusted JSON body passes before decoding."""

from __future__ import annotations

import pytest

from registry_core.jsondoc import MAX_DEPTH, check_document, nesting_depth


@pytest.mark.parametrize(
    ("body", "depth"),
    [
        (b"", 0),
        (b"1", 0),
        (b"[]", 1),
        (b'{"a": [{"b": 1}]}', 3),
        (b'{"a": "[[[{{{"}', 1),
        (b'["\\"[[[", [1]]', 2),
        (b'["ends in a backslash\\\\", [[1]]]', 3),
        (b"[[], [[], [[]]]]", 4),
    ],
    ids=[
        "empty",
        "scalar",
        "array",
        "mixed",
        "brackets-in-a-string",
        "escaped-quote",
        "escaped-backslash",
        "siblings",
    ],
)
def test_nesting_depth_counts_only_brackets_outside_strings(body: bytes, depth: int) -> None:
    assert nesting_depth(body) == depth


def test_a_document_at_the_depth_limit_passes() -> None:
    check_document(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)


@pytest.mark.parametrize("opener", [b"[", b'{"a":'], ids=["arrays", "objects"])
def test_a_document_past_the_depth_limit_is_refused(opener: bytes) -> None:
    with pytest.raises(ValueError, match="deeper"):
        check_document(opener * (MAX_DEPTH + 1))


def test_invalid_utf8_is_refused_with_its_position() -> None:
    with pytest.raises(ValueError, match="UTF-8 \\(byte 6\\)"):
        check_document(b'{"a": \xff}')


def test_duplicate_keys_are_refused_when_asked() -> None:
    body = b'{"a": {"b": 1, "b": 2}}'
    check_document(body)
    with pytest.raises(ValueError, match="duplicate key 'b'"):
        check_document(body, unique_keys=True)


def test_text_that_is_not_json_is_left_to_the_callers_decoder() -> None:
    check_document(b"{not json", unique_keys=True)
