"""Keys on disk (`bazaar keys init`), loading them, and the settings around them."""

from __future__ import annotations

import stat

import pytest
from click.testing import CliRunner

from bazaar import config, security
from bazaar.commands import main
from bazaar.errors import http_status


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_makes_a_pair_per_role_with_private_secrets(tmp_path):
    made = security.init_keys(tmp_path / "keys")
    assert made == list(security.ROLES)
    for role in security.ROLES:
        assert mode(tmp_path / "keys" / f"{role}.key_secret") == 0o600
        assert mode(tmp_path / "keys" / f"{role}.key") == 0o644
    pairs = {role: security.load_keys(tmp_path / "keys", role) for role in security.ROLES}
    assert len({k.public for k in pairs.values()}) == len(security.ROLES)  # one pair each
    assert pairs["client"].cluster == pairs["catalog"].cluster


def test_init_never_overwrites_and_fills_only_the_gaps(tmp_path):
    keys = tmp_path / "keys"
    security.init_keys(keys)
    before = {p.name: p.read_bytes() for p in keys.iterdir()}
    assert security.init_keys(keys) == []
    assert {p.name: p.read_bytes() for p in keys.iterdir()} == before
    (keys / "order2.key").unlink()
    (keys / "order2.key_secret").unlink()
    assert security.init_keys(keys) == ["order2"]
    assert all(
        (keys / name).read_bytes() == data for name, data in before.items() if "order2" not in name
    )


def test_half_a_pair_is_an_error_not_a_new_key(tmp_path):
    keys = tmp_path / "keys"
    security.init_keys(keys)
    (keys / "frontend.key_secret").unlink()
    public = (keys / "frontend.key").read_bytes()
    with pytest.raises(security.KeysError, match="frontend.key exists without"):
        security.init_keys(keys)
    assert (keys / "frontend.key").read_bytes() == public


def test_missing_keys_say_how_to_make_them(tmp_path):
    with pytest.raises(security.KeysError) as err:
        security.load_keys(tmp_path / "none", "catalog")
    message = str(err.value)
    assert "bazaar keys init" in message and "BAZAAR_INSECURE=1" in message
    assert "\n" not in message


def test_a_public_key_that_does_not_match_its_secret_is_refused(tmp_path):
    keys = tmp_path / "keys"
    security.init_keys(keys)
    (keys / "catalog.key").write_bytes((keys / "client.key").read_bytes())
    with pytest.raises(security.KeysError, match="does not match"):
        security.load_keys(keys, "catalog")


def test_keys_never_print_their_secret(tmp_path):
    security.init_keys(tmp_path)
    keys = security.load_keys(tmp_path, "order1")
    assert keys.secret.decode() not in repr(keys)


def test_insecure_mode_needs_no_keys_and_says_so(tmp_path, caplog):
    assert security.for_service(tmp_path / "none", True, "catalog") is None
    assert "WITHOUT CurveZMQ" in caplog.text


def test_cli_keys_init_exits_zero_when_present(tmp_path):
    runner = CliRunner()
    first = runner.invoke(main, ["keys", "init", str(tmp_path / "k")])
    assert first.exit_code == 0, first.output
    assert "made keys for catalog, order1, order2, order3, frontend, client" in first.stderr
    again = runner.invoke(main, ["keys", "init", str(tmp_path / "k")])
    assert again.exit_code == 0 and again.stderr == ""


def test_cli_call_without_keys_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("BAZAAR_KEYS_DIR", str(tmp_path / "none"))
    result = CliRunner().invoke(main, ["call", "--server", "catalog", "tcp://127.0.0.1:9", "ping"])
    assert result.exit_code == 1
    assert "bazaar keys init" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("yes", True), ("0", False), ("", False)]
)
def test_insecure_setting(value, expected):
    assert config.from_env({"BAZAAR_INSECURE": value}).insecure is expected


def test_insecure_setting_rejects_nonsense():
    with pytest.raises(config.ConfigError, match="BAZAAR_INSECURE"):
        config.from_env({"BAZAAR_INSECURE": "maybe"})


def test_bind_host_defaults_to_loopback():
    cfg = config.from_env({})
    assert cfg.bind_host == "127.0.0.1"
    assert cfg.bind("tcp://catalog:5555") == "tcp://127.0.0.1:5555"
    image = config.from_env({"BAZAAR_BIND_HOST": "0.0.0.0"})
    assert image.bind("tcp://catalog:5555") == "tcp://*:5555"
    with pytest.raises(config.ConfigError, match="BAZAAR_BIND_HOST"):
        config.from_env({"BAZAAR_BIND_HOST": "a b"})


def test_keys_dir_defaults_next_to_the_data():
    assert config.from_env({"BAZAAR_DATA_DIR": "/d"}).keys_path == config.Path("/d/keys")
    assert config.from_env({"BAZAAR_KEYS_DIR": "/k"}).keys_path == config.Path("/k")


def test_permission_denied_is_403():
    assert http_status("PERMISSION_DENIED") == 403
