"""Uplink credentials go over TLS only: an http:// uplink with a bearer token, an mqtt://
uplink with a password, or a password in the URL is refused at load (the daemon does not
start) unless that uplink says `insecure_credentials = true`."""

from __future__ import annotations

import pytest
from roadside.gateway.config import ConfigError, load


@pytest.fixture
def files(tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "pass").write_text("s3cret\n")
    (tmp_path / "ca.pem").write_text("not read at load\n")
    for f in ("token", "pass"):
        (tmp_path / f).chmod(0o600)
    return tmp_path


def _load(tmp_path, uplink: str):
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'[gateway]\nid = "g"\nsite = "s"\ndata_dir = "data"\n[[uplink]]\n{uplink}')
    return load(cfg)


@pytest.mark.parametrize("uplink, key", [
    ('type = "http"\nurl = "http://city.example/b"\ntoken_file = "token"\n', "token_file"),
    ('type = "http"\nurl = "http://u:pw@city.example/b"\n', "url"),
    ('type = "mqtt"\nurl = "mqtt://broker"\nusername = "gw"\npassword_file = "pass"\n',
     "password_file"),
    ('type = "mqtt"\nurl = "mqtt://gw:pw@broker"\n', "url"),
])
def test_credentials_in_clear_are_refused(files, monkeypatch, uplink, key):
    with pytest.raises(ConfigError) as err:
        _load(files, uplink)
    text = str(err.value)
    assert text.startswith(f"uplink[0].{key}: ") and "would be sent in clear" in text
    assert "insecure_credentials = true" in text
    assert "s3cret" not in text and ":pw@" not in text      # the secret is not echoed
    # Said explicitly for this uplink: accepted.
    config = _load(files, uplink + "insecure_credentials = true\n")
    assert config.uplinks[0].url.split(":")[0] in ("http", "mqtt")


@pytest.mark.parametrize("uplink", [
    'type = "http"\nurl = "https://city.example/b"\ntoken_file = "token"\n',
    'type = "http"\nurl = "http://city.example/b"\n',              # no credentials
    'type = "mqtt"\nurl = "mqtts://broker"\nusername = "gw"\npassword_file = "pass"\n',
    'type = "mqtt"\nurl = "mqtt://broker"\nusername = "gw"\n',      # a name is no secret
])
def test_tls_or_no_credentials_load(files, uplink):
    assert _load(files, uplink).uplinks[0].name in ("http", "mqtt")


def test_the_flag_is_a_boolean(files):
    with pytest.raises(ConfigError, match=r"uplink\[0\].insecure_credentials: must be true or"
                                          r" false, got 'yes'"):
        _load(files, 'type = "http"\nurl = "http://x/b"\ninsecure_credentials = "yes"\n')


def test_a_secret_file_readable_by_others_is_warned_about_at_load(files, caplog):
    (files / "token").chmod(0o644)
    _load(files, 'type = "http"\nurl = "https://city.example/b"\ntoken_file = "token"\n')
    assert (f"uplink[0].token_file: secret file {files / 'token'} is readable by others"
            f" (mode 0644); run `chmod 600 {files / 'token'}`") in caplog.text
    caplog.clear()
    (files / "token").chmod(0o600)
    _load(files, 'type = "http"\nurl = "https://city.example/b"\ntoken_file = "token"\n')
    assert "readable by others" not in caplog.text
