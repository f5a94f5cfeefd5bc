"""gateway.toml loading: defaults, and errors that name the key, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
from roadside.gateway.config import ConfigError, load
from roadside.gateway.errors import GatewayError
from roadside.tools.sim.gateway_toml import write

BASE = """
[gateway]
id = "gw-1"
site = "s"
data_dir = "data"
"""


def cfg(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_the_file_the_tools_write_loads(tmp_path):
    path = write(tmp_path / "gw.toml", ["/dev/pts/7", "/dev/pts/8"], tmp_path / "d",
                 "http://127.0.0.1:1234/batches", "127.0.0.1:0")
    c = load(path)
    assert c.gateway.id == "gw-demo" and c.gateway.data_dir == tmp_path / "d"
    assert (tmp_path / "d").is_dir()
    assert [(lk.type, lk.port, lk.baudrate) for lk in c.links] == [
        ("serial", "/dev/pts/7", 115200), ("serial", "/dev/pts/8", 115200)]
    assert (c.batch.max_records, c.batch.max_bytes, c.batch.max_age_s) == (200, 65536, 1.0)
    assert c.uplinks[0].url == "http://127.0.0.1:1234/batches" and c.uplinks[0].name == "http"
    assert (c.status.host, c.status.port) == ("127.0.0.1", 0)


def test_defaults_and_relative_data_dir(tmp_path):
    c = load(cfg(tmp_path, BASE))
    assert c.gateway.data_dir == tmp_path / "data" and c.links == () and c.uplinks == ()
    assert c.status.listen == "127.0.0.1:8081"
    assert c.queue_path == tmp_path / "data" / "queue.sqlite"


@pytest.mark.parametrize("extra, expected", [
    ('[batch]\nmax_records = "x"\n', "batch.max_records: must be an integer 1..10000, got 'x'"),
    ("[batch]\nmax_records = 0\n", "batch.max_records: must be an integer 1..10000, got 0"),
    ("[batch]\nmax_age_s = -1\n", "batch.max_age_s: must be a number 0..3600, got -1"),
    ("[batch]\nmax_bytes = 10\n", "batch.max_bytes: must be an integer 1024..16777216, got 10"),
    ('[[link]]\ntype = "lora"\nport = "x"\n',
     "link[0].type: must be one of 'serial', 'ble', got 'lora'"),
    ('[[link]]\ntype = "ble"\nport = "x"\n', "link[0].port: unknown key"),
    ('[[link]]\ntype = "ble"\nnode = "wl-1"\n', "link[0].secret_file: missing"),
    ('[[link]]\ntype = "serial"\n', "link[0].port: missing"),
    ('[[link]]\ntype = "serial"\nport = "/dev/x"\nbaudrate = 1234\n',
     "link[0].baudrate: must be one of 9600,"),
    ('[[uplink]]\ntype = "http"\nurl = "ftp://x"\n',
     "uplink[0].url: must be an http:// or https:// URL, got 'ftp://x'"),
    ('[[uplink]]\ntype = "mqtt"\nurl = "http://x"\n',
     "uplink[0].url: must be an mqtt:// or mqtts:// URL, got 'http://x'"),
    ('[[uplink]]\ntype = "smtp"\nurl = "http://x"\n',
     "uplink[0].type: must be one of 'http', 'mqtt'"),
    ('[[uplink]]\ntype = "mqtt"\nurl = "mqtt://x"\ntopic = "a/{node}"\n',
     "uplink[0].topic: 'a/{node}' may use only {site}, {gateway}, {kind}"),
    ('[[uplink]]\ntype = "mqtt"\nurl = "mqtt://x"\nprotocol = "4"\n',
     "uplink[0].protocol: must be one of '3.1.1', '5', got '4'"),
    ('[[uplink]]\ntype = "mqtt"\nurl = "mqtt://x"\nusername = "u"\npassword_env = "RS_NOPE_PW"\n',
     "uplink[0].password_env: environment variable 'RS_NOPE_PW' is not set or empty"),
    ('[[uplink]]\ntype = "mqtt"\nurl = "mqtt://x"\nca_file = "/nonexistent/ca.pem"\n',
     "uplink[0].ca_file: no such file '/nonexistent/ca.pem'"),
    ('[[uplink]]\ntype = "http"\nurl = "http://x"\ntopic = "a"\n',
     "uplink[0].topic: unknown key"),
    ('[status]\nlisten = "8080"\n', "status.listen: must be \"HOST:PORT\""),
    ("[batch]\nmax_recods = 3\n", "batch.max_recods: unknown key; allowed keys: max_records"),
])
def test_errors_name_key_value_and_allowed(tmp_path, extra, expected):
    with pytest.raises(ConfigError) as exc:
        load(cfg(tmp_path, BASE + extra))
    assert expected in str(exc.value)
    assert "\n" not in str(exc.value)
    assert isinstance(exc.value, GatewayError)


def test_missing_gateway_id_and_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"gateway.id: missing"):
        load(cfg(tmp_path, '[gateway]\nsite = "s"\n'))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(cfg(tmp_path, "[gateway\n"))
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "nope.toml")


def test_duplicate_port(tmp_path):
    link = '[[link]]\ntype = "serial"\nport = "/dev/x"\n'
    with pytest.raises(ConfigError, match="link\\[1\\].port: '/dev/x' is listed twice"):
        load(cfg(tmp_path, BASE + link + link))
