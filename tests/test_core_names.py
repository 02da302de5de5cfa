"""Repository names, tags and references."""

from __future__ import annotations

import pytest

from registry_core.digest import Digest
from registry_core.errors import DigestInvalid, ManifestUnknown, NameInvalid, TagInvalid
from registry_core.names import Reference, RepositoryName, Tenant, validate_tag

# -- repository names --------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "acme/prod/app",
        "acme/prod/team/app/web",
        "a1/b2/c3",
        "acme/prod/a__b",
        "acme/prod/a_b",
        "acme/prod/a-b",
        "acme/prod/a--b",
        "acme/prod/a.b",
        "acme/prod/a.b-c_d__e",
        "0/1/2",
    ],
)
def test_valid_names_parse(name: str) -> None:
    assert str(RepositoryName.parse(name)) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("Acme/prod/app", "uppercase"),
        ("acme/prod/App", "uppercase"),
        ("acme/../app", "dot-dot component"),
        ("acme/prod/..", "dot-dot component"),
        ("acme/./app", "dot component"),
        ("acme//app", "empty component"),
        ("/acme/prod/app", "leading slash"),
        ("acme/prod/app/", "trailing slash"),
        ("acme/prod", "two components"),
        ("acme", "one component"),
        ("acme/prod/a___b", "three underscores"),
        ("acme/prod/a..b", "two dots"),
        ("acme/prod/a._b", "mixed separators"),
        ("acme/prod/-app", "leading separator"),
        ("acme/prod/app-", "trailing separator"),
        ("acme/prod/_app", "leading underscore"),
        ("acme/prod/ap p", "space"),
        ("acme/prod/caf\u00e9", "non-ASCII"),
        ("acme/prod/app\n", "trailing newline"),
        ("acme/prod/app:1", "colon"),
    ],
)
def test_invalid_names_are_refused(name: str, why: str) -> None:
    with pytest.raises(NameInvalid):
        RepositoryName.parse(name)


def test_empty_name_is_refused() -> None:
    with pytest.raises(NameInvalid, match="empty"):
        RepositoryName.parse("")


def test_empty_component_is_named_in_the_message() -> None:
    with pytest.raises(NameInvalid, match="empty path component"):
        RepositoryName.parse("acme//app")


def test_too_few_components_message_shows_the_form() -> None:
    with pytest.raises(NameInvalid, match="OWNER/REGISTRY/IMAGE"):
        RepositoryName.parse("acme/prod")


def test_name_of_255_characters_is_accepted() -> None:
    name = "acme/prod/" + "a" * 245
    assert len(name) == 255
    assert RepositoryName.parse(name).value == name


def test_name_over_255_characters_is_refused() -> None:
    with pytest.raises(NameInvalid, match="255"):
        RepositoryName.parse("acme/prod/" + "a" * 246)


def test_name_invalid_is_a_client_error() -> None:
    with pytest.raises(NameInvalid) as caught:
        RepositoryName.parse("Bad")
    assert (caught.value.code, caught.value.status) == ("NAME_INVALID", 400)


def test_tenant_is_the_first_two_components() -> None:
    name = RepositoryName.parse("acme/prod/team/app")
    assert name.tenant == Tenant("acme", "prod")
    assert str(name.tenant) == "acme/prod"


def test_image_is_everything_after_the_tenant() -> None:
    assert RepositoryName.parse("acme/prod/team/app").image == "team/app"
    assert RepositoryName.parse("acme/prod/app").image == "app"


# -- tags --------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["latest", "1.0", "v1.0.0-rc_1", "_private", "A", "9", "a" * 128])
def test_valid_tags_are_accepted(tag: str) -> None:
    assert validate_tag(tag) == tag


def test_tag_over_128_characters_is_refused() -> None:
    with pytest.raises(TagInvalid, match="128"):
        validate_tag("a" * 129)


@pytest.mark.parametrize(
    "tag", [".hidden", "-dash", "", "has space", "slash/tag", "colon:tag", "caf\u00e9", "v1\n"]
)
def test_invalid_tags_are_refused(tag: str) -> None:
    with pytest.raises(TagInvalid):
        validate_tag(tag)


# -- references --------------------------------------------------------------------

DIGEST = Digest.of(b"manifest")


def test_reference_parses_a_tag() -> None:
    assert Reference.parse("1.0") == Reference(tag="1.0")


def test_reference_parses_a_digest() -> None:
    assert Reference.parse(str(DIGEST)) == Reference(digest=DIGEST)


def test_reference_formats_as_what_it_holds() -> None:
    assert str(Reference.parse("1.0")) == "1.0"
    assert str(Reference.parse(str(DIGEST))) == str(DIGEST)


def test_bad_tag_on_read_is_manifest_unknown() -> None:
    with pytest.raises(ManifestUnknown):
        Reference.parse(".bad")


def test_bad_digest_on_read_is_manifest_unknown() -> None:
    with pytest.raises(ManifestUnknown):
        Reference.parse("sha256:short")


def test_bad_tag_on_write_is_tag_invalid() -> None:
    with pytest.raises(TagInvalid):
        Reference.parse(".bad", write=True)


def test_bad_digest_on_write_is_digest_invalid() -> None:
    with pytest.raises(DigestInvalid):
        Reference.parse("sha256:short", write=True)
