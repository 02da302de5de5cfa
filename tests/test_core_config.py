"""Configuration: defaults, the TOML file, environment overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry_core.config import Config, ConfigError, load_config


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cargohold.toml"
    path.write_text(text)
    return path


def test_defaults_serve_from_a_local_folder() -> None:
    config = load_config(environ={})
    assert config.storage.url == "./var/registry"
    assert config.server.listen == "127.0.0.1:5000"


def test_defaults_match_an_empty_config() -> None:
    assert load_config(environ={}) == Config()


def test_default_limits() -> None:
    config = load_config(environ={})
    assert config.manifests.strict_index is False
    assert config.manifests.max_size == 4 * 1024 * 1024
    assert config.uploads.purge_after == 24 * 3600.0


def test_toml_file_is_read(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
        [server]
        listen = "0.0.0.0:8080"
        log_format = "json"

        [storage]
        url = "memory://"
        options = { anon = true, region = "eu-west-1" }

        [uploads]
        purge_after = 600

        [manifests]
        strict_index = true
        """,
    )
    config = load_config(path, environ={})
    assert config.server.listen == "0.0.0.0:8080"
    assert config.server.log_format == "json"
    assert config.storage.url == "memory://"
    assert config.storage.options == {"anon": True, "region": "eu-west-1"}
    assert config.uploads.purge_after == 600.0
    assert config.manifests.strict_index is True


def test_sections_left_out_of_the_file_keep_their_defaults(tmp_path: Path) -> None:
    config = load_config(write_toml(tmp_path, '[storage]\nurl = "memory://"\n'), environ={})
    assert config.server.listen == "127.0.0.1:5000"


def test_unknown_key_names_the_key_and_its_section(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[server]\nlisten = "x:1"\nlisen = "typo"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert "lisen" in str(caught.value)
    assert "server" in str(caught.value)


def test_unknown_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sever"):
        load_config(write_toml(tmp_path, '[sever]\nlisten = "x:1"\n'), environ={})


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[uploads]\npurge_after = "tomorrow"\n')
    with pytest.raises(ConfigError, match=r"uploads\.purge_after"):
        load_config(path, environ={})


def test_value_outside_its_choices_is_refused(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[server]\nlog_format = "xml"\n')
    with pytest.raises(ConfigError, match="log_format"):
        load_config(path, environ={})


def test_error_message_names_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[server]\nbogus = 1\n")
    with pytest.raises(ConfigError, match=r"cargohold\.toml"):
        load_config(path, environ={})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write_toml(tmp_path, "[server\nlisten ="), environ={})


def test_environment_sets_a_string() -> None:
    config = load_config(environ={"CARGOHOLD_SERVER_LISTEN": "0.0.0.0:9000"})
    assert config.server.listen == "0.0.0.0:9000"


def test_environment_sets_a_boolean() -> None:
    config = load_config(environ={"CARGOHOLD_MANIFESTS_STRICT_INDEX": "true"})
    assert config.manifests.strict_index is True


def test_environment_sets_a_number() -> None:
    config = load_config(environ={"CARGOHOLD_UPLOADS_PURGE_AFTER": "90"})
    assert config.uploads.purge_after == 90.0


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[server]\nlisten = "from-file:1"\n')
    config = load_config(path, environ={"CARGOHOLD_SERVER_LISTEN": "from-env:2"})
    assert config.server.listen == "from-env:2"


def test_environment_keeps_other_keys_of_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[server]\nlisten = "from-file:1"\nlog_format = "json"\n')
    config = load_config(path, environ={"CARGOHOLD_SERVER_LISTEN": "from-env:2"})
    assert config.server.log_format == "json"


def test_process_environment_is_read_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARGOHOLD_SERVER_LISTEN", "10.0.0.1:5555")
    assert load_config().server.listen == "10.0.0.1:5555"


def test_unknown_environment_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        load_config(environ={"CARGOHOLD_SERVER_BOGUS": "1"})


def test_environment_value_of_the_wrong_type_is_an_error() -> None:
    with pytest.raises(ConfigError, match="strict_index"):
        load_config(environ={"CARGOHOLD_MANIFESTS_STRICT_INDEX": "maybe"})


def test_unrelated_environment_variables_are_ignored() -> None:
    config = load_config(environ={"PATH": "/bin", "CARGOHOLDER_X": "1", "HOME": "/root"})
    assert config == Config()


def test_explicit_overrides_win_over_the_environment() -> None:
    config = load_config(
        environ={"CARGOHOLD_SERVER_LISTEN": "env:1"},
        overrides={"server": {"listen": "explicit:2"}},
    )
    assert config.server.listen == "explicit:2"
