"""The tenancy command line: ``cargohold users|owners|registries|members|api-keys|tokens``.

Every command runs as a real process on a ``file://`` store (``--storage``, or
``--config`` naming it). Each command's success and its main error are checked: errors
are one line on stderr starting ``cargohold:`` with a non-zero exit and nothing on
stdout. Secrets are read from stdin (``--password-stdin``), printed once on creation
(alone on stdout), never listed, and never stored in clear.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import sample_image
from tests.helpers.registry_api import MANIFEST_ACCEPT, push_image
from tests.helpers.tenants import (
    Seeder,
    cargohold_cli,
    cli_api_key,
    cli_token,
    cli_user,
    http,
    new_store,
    write_config,
)


@pytest.fixture
def store(tmp_path: Path) -> Seeder:
    return new_store(tmp_path)


def cli(store: Seeder, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return cargohold_cli(*args, storage=store.storage, input=input)


def fails(store: Seeder, *args: str, input: str | None = None, code: int = 1) -> str:
    """Run a command that must fail; returns its one-line error message."""
    proc = cargohold_cli(*args, storage=store.storage, input=input, check=False)
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("cargohold: ")
    return lines[0]


def table(proc: subprocess.CompletedProcess) -> list[list[str]]:
    """Rows of a listing (header dropped), split on runs of spaces."""
    rows = proc.stdout.strip().splitlines()[1:]
    return [row.split() for row in rows]


def stored_text(store: Seeder) -> str:
    """Every byte the store holds, as text (to look for secrets in clear)."""
    root = Path(store.storage.removeprefix("file://"))
    return "".join(
        path.read_bytes().decode("latin-1") for path in root.rglob("*") if path.is_file()
    )


def verifies(store: Seeder, user: str, password: str) -> bool:
    from registry_core.tenancy import verify_password

    async def work(tenancy):
        return await tenancy.get_user(user)

    record = store._run(work)
    return record is not None and verify_password(password, record.password_hash)


# -- users --------------------------------------------------------------------------------------


def test_users_create_reads_the_password_from_stdin(store: Seeder) -> None:
    proc = cli(store, "users", "create", "alice", "--password-stdin", input="s3cret pass\n")

    assert proc.stdout.strip() == "created user alice"
    assert verifies(store, "alice", "s3cret pass")
    assert not verifies(store, "alice", "s3cret pass\n")
    assert "s3cret pass" not in stored_text(store)
    row = table(cli(store, "users", "list"))[0]
    assert row[0] == "alice"
    assert "yes" not in row  # not a superuser


def test_users_create_superuser(store: Seeder) -> None:
    proc = cli(store, "users", "create", "ops", "--superuser", "--password-stdin", input="pw\n")

    assert proc.stdout.strip() == "created user ops (superuser)"
    rows = table(cli(store, "users", "list"))
    assert rows[0][:2] == ["ops", "yes"]


@pytest.mark.parametrize(
    "args,stdin,message",
    [
        (["alice", "--password-stdin"], "again\n", "user 'alice' already exists"),
        (["bob"], "pw\n", "--password-stdin"),
        (["bob", "--password-stdin"], "\n", "no password on standard input"),
        (["Bad_Name", "--password-stdin"], "pw\n", "invalid user name"),
    ],
    ids=["duplicate", "no-password-stdin", "empty-password", "bad-name"],
)
def test_users_create_errors(store: Seeder, args: list[str], stdin: str, message: str) -> None:
    store.user("alice")

    assert message in fails(store, "users", "create", *args, input=stdin)
    assert [row[0] for row in table(cli(store, "users", "list"))] == ["alice"]


def test_users_list_shows_no_secret(store: Seeder) -> None:
    alice = store.user("alice")
    store.user("bob", superuser=True)

    proc = cli(store, "users", "list")
    listing = proc.stdout

    assert [row[0] for row in table(proc)] == ["alice", "bob"]
    assert table(proc)[1][1] == "yes"
    assert alice.secret not in listing
    assert "scrypt" not in listing


def test_users_set_password(store: Seeder) -> None:
    alice = store.user("alice")

    proc = cli(store, "users", "set-password", "alice", "--password-stdin", input="new-one\n")

    assert proc.stdout.strip() == "changed the password of alice"
    assert verifies(store, "alice", "new-one")
    assert not verifies(store, "alice", alice.secret)
    assert "user 'ghost' does not exist" in fails(
        store, "users", "set-password", "ghost", "--password-stdin", input="x\n"
    )


def test_users_delete_revokes_api_keys(store: Seeder) -> None:
    store.user("alice")
    key = cli_api_key(store.storage, "alice")

    proc = cli(store, "users", "delete", "alice")

    assert "deleted user alice" in proc.stdout
    assert table(cli(store, "users", "list")) == []
    rows = table(cli(store, "api-keys", "list"))
    assert [(row[0], row[-1]) for row in rows] == [(key.id, "revoked")]
    assert "user 'alice' does not exist" in fails(store, "users", "delete", "alice")


def superusers(store: Seeder) -> list[str]:
    return [
        row[0] for row in table(cli(store, "users", "list")) if len(row) > 1 and row[1] == "yes"
    ]


def test_users_delete_refuses_the_last_superuser(store: Seeder) -> None:
    store.user("root", superuser=True)
    store.user("alice")

    message = fails(store, "users", "delete", "root")

    assert message == "cargohold: cannot delete 'root': it is the last superuser"
    assert superusers(store) == ["root"]


def test_users_update_refuses_to_demote_the_last_superuser(store: Seeder) -> None:
    store.user("root", superuser=True)

    message = fails(store, "users", "update", "root", "--no-superuser")

    assert message == "cargohold: cannot demote 'root': it is the last superuser"
    assert superusers(store) == ["root"]


def test_users_update_promotes_and_demotes_while_another_superuser_remains(
    store: Seeder,
) -> None:
    store.user("root", superuser=True)
    store.user("alice")

    promoted = cli(store, "users", "update", "alice", "--superuser")
    demoted = cli(store, "users", "update", "root", "--no-superuser")

    assert promoted.stdout.strip() == "alice is now a superuser"
    assert demoted.stdout.strip() == "root is no longer a superuser"
    assert superusers(store) == ["alice"]
    assert cli(store, "users", "delete", "root").returncode == 0
    assert "last superuser" in fails(store, "users", "delete", "alice")


# -- owners and registries ----------------------------------------------------------------------------


def test_owners_create_list_delete(store: Seeder) -> None:
    assert cli(store, "owners", "create", "acme").stdout.strip() == "created owner acme"
    cli(store, "owners", "create", "jane", "--user")

    rows = table(cli(store, "owners", "list"))
    assert [row[:2] for row in rows] == [["acme", "org"], ["jane", "user"]]
    assert "owner 'acme' already exists" in fails(store, "owners", "create", "acme")
    assert cli(store, "owners", "delete", "jane").stdout.strip() == "deleted owner jane"
    assert [row[0] for row in table(cli(store, "owners", "list"))] == ["acme"]
    assert "owner 'jane' does not exist" in fails(store, "owners", "delete", "jane")


def test_owners_delete_refuses_an_owner_with_registries(store: Seeder) -> None:
    store.registry("acme/prod")

    assert "still holds registries" in fails(store, "owners", "delete", "acme")
    assert [row[0] for row in table(cli(store, "owners", "list"))] == ["acme"]


def test_registries_create_list_update_delete(store: Seeder) -> None:
    store.owner("acme")

    created = cli(store, "registries", "create", "acme/prod")
    public = cli(store, "registries", "create", "acme/pub", "--public")

    # The first line; signing is on with tenancy, so the new keys follow (signing tests).
    assert created.stdout.splitlines()[0] == "created registry acme/prod (private)"
    assert public.stdout.splitlines()[0] == "created registry acme/pub (public)"
    assert "signing key cosign-1 (ecdsa-p256," in created.stdout
    assert [row[:2] for row in table(cli(store, "registries", "list"))] == [
        ["acme/prod", "private"],
        ["acme/pub", "public"],
    ]
    updated = cli(store, "registries", "update", "acme/prod", "--visibility", "public")
    assert updated.stdout.strip() == "registry acme/prod is public"
    assert table(cli(store, "registries", "list", "acme"))[0][:2] == ["acme/prod", "public"]
    token = cli_token(store.storage, "acme/pub")
    deleted = cli(store, "registries", "delete", "acme/pub")
    assert "deleted registry acme/pub" in deleted.stdout
    assert [row[0] for row in table(cli(store, "registries", "list"))] == ["acme/prod"]
    # Its tokens went with it.
    assert store._run(lambda t: t.get_token(token.id)).revoked


@pytest.mark.parametrize(
    "args,message,code",
    [
        (["create", "acme"], "expected OWNER/REGISTRY, not 'acme'", 1),
        (["create", "ghost/prod"], "owner 'ghost' does not exist", 1),
        (["create", "acme/prod"], "registry acme/prod already exists", 1),
        (["create", "acme/Prod"], "invalid registry name", 1),
        (
            ["update", "acme/ghost", "--visibility", "public"],
            "registry acme/ghost does not exist",
            1,
        ),
        (["delete", "acme/ghost"], "registry acme/ghost does not exist", 1),
    ],
    ids=["no-slash", "unknown-owner", "duplicate", "bad-name", "update-unknown", "delete-unknown"],
)
def test_registries_errors(store: Seeder, args: list[str], message: str, code: int) -> None:
    store.registry("acme/prod")

    assert message in fails(store, "registries", *args, code=code)


def test_registries_update_needs_a_known_visibility(store: Seeder) -> None:
    proc = cargohold_cli(
        "registries", "update", "acme/prod", "--visibility", "secret",
        storage=store.storage, check=False,
    )  # fmt: skip

    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


# -- members --------------------------------------------------------------------------------------


def test_members_add_list_remove(store: Seeder) -> None:
    store.user("alice")
    store.user("bob")
    store.registry("acme/prod")

    owner_level = cli(store, "members", "add", "acme", "alice", "--role", "admin")
    registry_level = cli(store, "members", "add", "acme/prod", "bob", "--role", "read")

    assert owner_level.stdout.strip() == "alice is admin on acme"
    assert registry_level.stdout.strip() == "bob is read on acme/prod"
    assert table(cli(store, "members", "list", "acme")) == [["alice", "admin"]]
    assert table(cli(store, "members", "list", "acme/prod")) == [["bob", "read"]]
    cli(store, "members", "add", "acme/prod", "bob", "--role", "write")  # change of role
    assert table(cli(store, "members", "list", "acme/prod")) == [["bob", "write"]]
    assert cli(store, "members", "remove", "acme/prod", "bob").stdout.strip() == (
        "removed bob from acme/prod"
    )
    assert table(cli(store, "members", "list", "acme/prod")) == []
    assert "'bob' is not a member there" in fails(store, "members", "remove", "acme/prod", "bob")


@pytest.mark.parametrize(
    "target,user,message",
    [
        ("acme/prod", "ghost", "user 'ghost' does not exist"),
        ("acme/ghost", "alice", "registry acme/ghost does not exist"),
        ("ghost", "alice", "owner 'ghost' does not exist"),
        ("acme/prod/app", "alice", "expected OWNER or OWNER/REGISTRY"),
    ],
    ids=["unknown-user", "unknown-registry", "unknown-owner", "repository-not-tenant"],
)
def test_members_add_errors(store: Seeder, target: str, user: str, message: str) -> None:
    store.user("alice")
    store.registry("acme/prod")

    assert message in fails(store, "members", "add", target, user, "--role", "read")


def test_members_add_needs_a_known_role(store: Seeder) -> None:
    proc = cargohold_cli(
        "members", "add", "acme", "alice", "--role", "owner", storage=store.storage, check=False
    )

    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


# -- API keys --------------------------------------------------------------------------------------


def test_api_keys_create_prints_the_secret_once(store: Seeder) -> None:
    store.user("alice")

    proc = cli(store, "api-keys", "create", "alice", "--name", "ci")

    secret = proc.stdout.strip()
    assert proc.stdout == secret + "\n"  # the secret alone on stdout, for scripts
    assert secret.startswith("chk_")
    key_id = secret.split("_")[1]
    assert f"API key {key_id} for alice" in proc.stderr
    assert "shown once" in proc.stderr
    assert secret not in proc.stderr
    listing = cli(store, "api-keys", "list", "alice").stdout
    assert secret not in listing
    assert secret.split("_", 2)[2] not in stored_text(store)
    assert table(cli(store, "api-keys", "list"))[0] == [key_id, "alice", "ci", "never", "active"]


def test_api_keys_create_with_expiry(store: Seeder) -> None:
    store.user("alice")

    key = cli_api_key(store.storage, "alice", expires="30d")

    row = table(cli(store, "api-keys", "list", "alice"))[0]
    assert row[0] == key.id
    assert row[-1] == "active"
    assert "never" not in row


def test_api_keys_revoke(store: Seeder) -> None:
    store.user("alice")
    key = cli_api_key(store.storage, "alice")
    other = cli_api_key(store.storage, "alice")

    proc = cli(store, "api-keys", "revoke", key.id)

    assert proc.stdout.strip() == f"revoked API key {key.id}"
    states = {row[0]: row[-1] for row in table(cli(store, "api-keys", "list"))}
    assert states == {key.id: "revoked", other.id: "active"}


@pytest.mark.parametrize(
    "args,message",
    [
        (["create", "ghost"], "user 'ghost' does not exist"),
        (["create", "alice", "--expires", "soon"], "invalid duration 'soon'"),
        (["revoke", "0123456789abcdef"], "API key '0123456789abcdef' does not exist"),
    ],
    ids=["unknown-user", "bad-expiry", "revoke-unknown"],
)
def test_api_keys_errors(store: Seeder, args: list[str], message: str) -> None:
    store.user("alice")

    assert message in fails(store, "api-keys", *args)


# -- entitlement tokens ------------------------------------------------------------------------------


def test_tokens_create_prints_the_secret_once_with_its_limits(store: Seeder) -> None:
    store.registry("acme/prod")

    proc = cli(
        store,
        "tokens", "create", "acme/prod",
        "--expires", "12h", "--max-pulls", "5", "--images", "tools/*", "--name", "customer",
    )  # fmt: skip

    secret = proc.stdout.strip()
    assert proc.stdout == secret + "\n"
    assert secret.startswith("cht_")
    token_id = secret.split("_")[1]
    assert f"entitlement token {token_id} for acme/prod (pull only)" in proc.stderr
    assert "shown once" in proc.stderr
    listing = cli(store, "tokens", "list", "acme/prod")
    assert secret not in listing.stdout
    row = table(listing)[0]
    assert row[0] == token_id
    assert row[1] == "customer"
    assert row[-3:] == ["0/5", "tools/*", "active"]
    assert secret.split("_", 2)[2] not in stored_text(store)


def test_tokens_revoke(store: Seeder) -> None:
    store.registry("acme/prod")
    token = cli_token(store.storage, "acme/prod")

    proc = cli(store, "tokens", "revoke", token.id)

    assert proc.stdout.strip() == f"revoked token {token.id}"
    assert table(cli(store, "tokens", "list", "acme/prod"))[0][-1] == "revoked"


def test_tokens_list_counts_pulls(store: Seeder, registry_factory, tmp_path: Path) -> None:
    store.registry("acme/prod")
    root = store.user("root", superuser=True)
    token = cli_token(store.storage, "acme/prod", max_pulls=3)
    server = registry_factory(
        storage_url=store.storage, auth=True, config=write_config(tmp_path / "c.toml")
    )
    push_image(server.url, "acme/prod/app", sample_image(), "1", session=http(root.auth))
    for _ in range(2):
        got = http(token.auth).get(
            f"{server.url}/v2/acme/prod/app/manifests/1", headers={"Accept": MANIFEST_ACCEPT}
        )
        assert got.status_code == 200

    assert table(cli(store, "tokens", "list", "acme/prod"))[0][-3] == "2/3"


@pytest.mark.parametrize(
    "args,message",
    [
        (["create", "acme/ghost"], "registry acme/ghost does not exist"),
        (["create", "acme"], "expected OWNER/REGISTRY, not 'acme'"),
        (["create", "acme/prod", "--max-pulls", "0"], "max_pulls must be at least 1"),
        (["create", "acme/prod", "--expires", "later"], "invalid duration 'later'"),
        (["revoke", "0123456789abcdef"], "token '0123456789abcdef' does not exist"),
    ],
    ids=["unknown-registry", "no-slash", "zero-pulls", "bad-expiry", "revoke-unknown"],
)
def test_tokens_errors(store: Seeder, args: list[str], message: str) -> None:
    store.registry("acme/prod")

    assert message in fails(store, "tokens", *args)


# -- configuration and the whole chain ----------------------------------------------------------------


def test_commands_take_the_storage_from_the_config_file(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    config = write_config(tmp_path / "config.toml", storage={"url": store.storage})

    cargohold_cli("owners", "create", "acme", config=config)

    assert [row[0] for row in table(cargohold_cli("owners", "list", storage=store.storage))] == [
        "acme"
    ]
    assert [row[0] for row in table(cargohold_cli("owners", "list", config=config))] == ["acme"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--storage", "bogus://somewhere"], "no storage driver for 'bogus'"),
        (["--config", "/nonexistent/cargohold.toml"], "does not exist"),
    ],
    ids=["bad-storage", "missing-config"],
)
def test_unusable_configuration_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    proc = cargohold_cli("users", "list", *args, check=False)

    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1
    assert message in proc.stderr


def test_cli_made_tenancy_logs_in_to_a_server(
    store: Seeder, registry_factory, tmp_path: Path
) -> None:
    alice = cli_user(store.storage, "alice")
    cli(store, "owners", "create", "acme")
    cli(store, "registries", "create", "acme/prod")
    cli(store, "members", "add", "acme/prod", "alice", "--role", "write")
    key = cli_api_key(store.storage, "alice")
    token = cli_token(store.storage, "acme/prod")
    server = registry_factory(
        storage_url=store.storage, auth=True, config=write_config(tmp_path / "c.toml")
    )
    image = sample_image("cli")

    push_image(server.url, "acme/prod/app", image, "1", session=http(alice.auth))

    for cred in (alice, key, token):
        got = http(cred.auth).get(
            f"{server.url}/v2/acme/prod/app/manifests/1", headers={"Accept": MANIFEST_ACCEPT}
        )
        assert got.content == image.manifest, cred.username
