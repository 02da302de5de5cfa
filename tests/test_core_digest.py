"""Digests: parsing, formatting, streaming hashers and verification."""

from __future__ import annotations

import hashlib

import pytest

from registry_core.digest import Digest, Hasher, is_digest, verify
from registry_core.errors import DigestInvalid

SHA256_HEX = hashlib.sha256(b"hello").hexdigest()
SHA512_HEX = hashlib.sha512(b"hello").hexdigest()


def test_parse_sha256() -> None:
    digest = Digest.parse(f"sha256:{SHA256_HEX}")
    assert digest.algorithm == "sha256"
    assert digest.hex == SHA256_HEX


def test_parse_sha512() -> None:
    digest = Digest.parse(f"sha512:{SHA512_HEX}")
    assert digest.algorithm == "sha512"
    assert digest.hex == SHA512_HEX


@pytest.mark.parametrize("text", [f"sha256:{SHA256_HEX}", f"sha512:{SHA512_HEX}"])
def test_format_round_trips(text: str) -> None:
    assert str(Digest.parse(text)) == text


def test_uppercase_hex_is_rejected() -> None:
    with pytest.raises(DigestInvalid):
        Digest.parse(f"sha256:{SHA256_HEX.upper()}")


def test_uppercase_algorithm_is_rejected() -> None:
    with pytest.raises(DigestInvalid):
        Digest.parse(f"SHA256:{SHA256_HEX}")


@pytest.mark.parametrize("hexpart", [SHA256_HEX[:-1], SHA256_HEX + "0", "", SHA512_HEX])
def test_wrong_length_is_rejected(hexpart: str) -> None:
    with pytest.raises(DigestInvalid, match="64"):
        Digest.parse(f"sha256:{hexpart}")


def test_sha512_with_sha256_length_is_rejected() -> None:
    with pytest.raises(DigestInvalid, match="128"):
        Digest.parse(f"sha512:{SHA256_HEX}")


def test_non_hex_characters_are_rejected() -> None:
    with pytest.raises(DigestInvalid):
        Digest.parse("sha256:" + "g" * 64)


def test_trailing_newline_is_rejected() -> None:
    with pytest.raises(DigestInvalid):
        Digest.parse(f"sha256:{SHA256_HEX[:-1]}\n")


def test_unknown_algorithm_is_rejected() -> None:
    with pytest.raises(DigestInvalid, match="md5"):
        Digest.parse("md5:" + hashlib.md5(b"x").hexdigest())


def test_missing_colon_is_rejected() -> None:
    with pytest.raises(DigestInvalid, match="missing algorithm"):
        Digest.parse(f"sha256{SHA256_HEX}")


def test_digest_invalid_is_a_client_error() -> None:
    with pytest.raises(DigestInvalid) as caught:
        Digest.parse("nonsense")
    assert caught.value.code == "DIGEST_INVALID"
    assert caught.value.status == 400


def test_of_hashes_with_sha256_by_default() -> None:
    assert Digest.of(b"hello") == Digest("sha256", SHA256_HEX)


def test_of_hashes_with_the_given_algorithm() -> None:
    assert Digest.of(b"hello", "sha512") == Digest("sha512", SHA512_HEX)


def test_digests_compare_by_value() -> None:
    assert Digest.parse(f"sha256:{SHA256_HEX}") == Digest.of(b"hello")
    assert Digest.of(b"hello") != Digest.of(b"world")
    assert len({Digest.of(b"a"), Digest.of(b"a")}) == 1


def test_is_digest_looks_for_an_algorithm_prefix() -> None:
    assert is_digest(f"sha256:{SHA256_HEX}")
    assert not is_digest("latest")


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_streaming_hasher_equals_one_shot(algorithm: str) -> None:
    data = bytes(range(256)) * 4099
    hasher = Hasher(algorithm)
    for start in range(0, len(data), 7919):
        hasher.update(data[start : start + 7919])
    assert hasher.digest() == Digest.of(data, algorithm)


def test_hasher_counts_bytes() -> None:
    hasher = Hasher()
    hasher.update(b"abc")
    hasher.update(memoryview(b"defg"))
    assert hasher.size == 7


def test_hasher_of_nothing_is_the_empty_digest() -> None:
    assert Hasher().digest() == Digest.of(b"")


def test_hasher_refuses_an_unknown_algorithm() -> None:
    with pytest.raises(DigestInvalid):
        Hasher("md5")


def test_verify_accepts_matching_data() -> None:
    verify(b"hello", Digest.of(b"hello"))


def test_verify_rejects_other_data_with_both_digests() -> None:
    with pytest.raises(DigestInvalid) as caught:
        verify(b"hullo", Digest.of(b"hello"))
    assert caught.value.detail == {
        "expected": str(Digest.of(b"hello")),
        "actual": str(Digest.of(b"hullo")),
    }


def test_verify_uses_the_expected_algorithm() -> None:
    verify(b"hello", Digest.of(b"hello", "sha512"))
