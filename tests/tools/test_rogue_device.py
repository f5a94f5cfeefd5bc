"""The installer's laptop against a rogue serial device: a device on a real pty that claims an
existing node's id, or an id like ../../x, answering `info` and `secret.set` as the firmware
would. `roadside config secret` must not send it an existing secret nor write outside the
secrets directory; key files readable by others are warned about."""

from __future__ import annotations

import hashlib
import os
import threading
import tty
from pathlib import Path

import pytest
from roadside.gateway import protocol as p
from roadside.tools import cli
from roadside.tools.node import ble_transport


class RogueDevice:
    """The device end of a pty pair: answers info with `claims` and records every COMMAND."""

    def __init__(self, claims: str) -> None:
        self.claims = claims
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.commands: list[p.Command] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import select

        decoder = p.FrameDecoder()
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            for payload in decoder.feed(chunk):
                msg = p.decode_message(payload)
                if not isinstance(msg, p.Command):
                    continue
                self.commands.append(msg)
                if msg.name == "info":
                    result: object = {"node": self.claims, "role": "water"}
                else:   # secret.set: the fingerprint of what it was sent, like the node
                    result = {"fingerprint": hashlib.sha256(
                        bytes.fromhex(msg.args["secret"])).hexdigest()[:8]}
                os.write(self.master, p.encode_frame(
                    {0: p.REPLY, 1: msg.request_id, 2: True, 3: result}))

    def sent_secrets(self) -> list[str]:
        return [c.args["secret"] for c in self.commands if c.name == "secret.set"]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def secrets_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "laptop" / "secrets"
    monkeypatch.setattr(ble_transport, "SECRETS_DIR", d)
    return d


@pytest.fixture
def rogue():
    devices: list[RogueDevice] = []

    def make(claims: str) -> RogueDevice:
        devices.append(RogueDevice(claims))
        return devices[-1]

    yield make
    for d in devices:
        d.close()


def _existing_key(secrets_dir: Path, node: str, mode: int = 0o600) -> bytes:
    secrets_dir.mkdir(parents=True, exist_ok=True)
    secret = bytes(range(32))
    key = secrets_dir / f"{node}.key"
    key.write_text(secret.hex() + "\n")
    key.chmod(mode)
    return secret


def test_existing_secret_is_not_sent_to_a_device_claiming_its_id(secrets_dir, rogue, capsys):
    secret = _existing_key(secrets_dir, "wl-0042")
    dev = rogue("wl-0042")
    assert cli.main(["config", "secret", dev.path, "--timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert "wl-0042 has a key file already" in err and "--resend" in err
    assert len(err.strip().splitlines()) == 1
    assert dev.sent_secrets() == [] and [c.name for c in dev.commands] == ["info"]
    # The installer says explicitly that this is wl-0042: then (and only then) it is sent.
    assert cli.main(["config", "secret", dev.path, "--timeout", "1", "--resend"]) == 0
    assert dev.sent_secrets() == [secret.hex()]


def test_a_device_claiming_a_path_as_its_id_gets_nothing_and_no_file_is_written(
        tmp_path, secrets_dir, rogue, capsys):
    before = sorted(tmp_path.rglob("*"))
    for claim in ("../../x", "../x", "a/b", "x" * 33, "wl 1"):
        dev = rogue(claim)
        assert cli.main(["config", "secret", dev.path, "--timeout", "1", "--new"]) == 2
        err = capsys.readouterr().err
        assert "bad node id" in err and "no secret sent" in err, err
        assert dev.sent_secrets() == []
    assert sorted(tmp_path.rglob("*")) == before        # no key file anywhere
    assert not (tmp_path / "x.key").exists() and not (tmp_path / "laptop" / "x.key").exists()


def test_bad_ids_are_refused_on_the_command_line(secrets_dir, capsys):
    assert cli.main(["config", "get", "--ble", "../../etc/x"]) == 2
    assert "--ble: bad node id '../../etc/x'" in capsys.readouterr().err
    assert cli.main(["config", "set", "/dev/nonexistent", "node_id=../x"]) == 2
    assert "node_id: bad value '../x'" in capsys.readouterr().err
    assert cli.main(["gateway", "cmd", "--config", "/nonexistent.toml", "a/b", "ping"]) == 2
    assert "NODE: bad node id 'a/b'" in capsys.readouterr().err


def test_a_key_file_readable_by_others_is_warned_about(secrets_dir, rogue, capsys):
    secret = _existing_key(secrets_dir, "wl-0007", mode=0o644)
    dev = rogue("wl-0007")
    assert cli.main(["config", "secret", dev.path, "--timeout", "1", "--resend"]) == 0
    err = capsys.readouterr().err
    key = secrets_dir / "wl-0007.key"
    assert f"secret file {key} is readable by others (mode 0644); run `chmod 600 {key}`" in err
    assert dev.sent_secrets() == [secret.hex()]
    key.chmod(0o600)
    assert cli.main(["config", "secret", dev.path, "--timeout", "1", "--resend"]) == 0
    assert "readable by others" not in capsys.readouterr().err
