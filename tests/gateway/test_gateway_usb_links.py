"""Serial links found by USB serial number or VID:PID, found again after a replug under another
path; a node that goes silent is reported once.

pyserial's `list_ports.comports` is patched at its function boundary (there is no USB adapter
here); the ports themselves are real ptys.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from roadside.gateway import protocol as p
from roadside.gateway.config import ConfigError, load
from roadside.gateway.daemon import make_links
from roadside.gateway.links import base
from roadside.gateway.links.serial import SerialLink
from roadside.gateway.links.usb import UsbMatch, describe_ports
from roadside.gateway.queue import Queue
from roadside.gateway.session import SessionManager
from roadside.gateway.status import Status
from serial.tools import list_ports
from serial.tools.list_ports_common import ListPortInfo


def port(device: str, vid: int | None = 0x10C4, pid: int | None = 0xEA60,
         serial: str | None = None) -> ListPortInfo:
    info = ListPortInfo(device, skip_link_detection=True)
    info.vid, info.pid, info.serial_number = vid, pid, serial
    info.description = "CP2102 USB to UART Bridge Controller"
    return info


@pytest.fixture
def ports(monkeypatch):
    """The list comports() returns; the test edits it to plug and unplug adapters."""
    present: list[ListPortInfo] = []
    monkeypatch.setattr(list_ports, "comports", lambda include_links=False: list(present))
    return present


def test_resolve_by_serial_vid_pid_both_none_and_ambiguous(ports):
    ports[:] = [port("/dev/ttyUSB1", serial="A1"), port("/dev/ttyUSB0", serial="B2"),
                port("/dev/ttyACM0", 0x303A, 0x1001, "C3"), port("/dev/ttyS0", None, None)]
    assert UsbMatch(usb_serial="B2").resolve() == ("/dev/ttyUSB0", None)
    assert UsbMatch(vid_pid="303a:1001").resolve() == ("/dev/ttyACM0", None)
    assert UsbMatch(vid_pid="303A:1001").resolve() == ("/dev/ttyACM0", None)
    assert UsbMatch("A1", "10c4:ea60").resolve() == ("/dev/ttyUSB1", None)
    assert UsbMatch("A1", "303a:1001").resolve() == (
        None, "no USB serial port matches usb:303a:1001,serial=A1")
    device, why = UsbMatch(vid_pid="10c4:ea60").resolve()
    assert device is None and why == (
        "2 USB serial ports match usb:10c4:ea60 (/dev/ttyUSB0, /dev/ttyUSB1):"
        " add usb_serial to tell them apart")
    assert describe_ports()[0] == (
        "/dev/ttyACM0 vid_pid=303a:1001 usb_serial=C3 CP2102 USB to UART Bridge Controller")
    assert describe_ports()[-1].startswith("/dev/ttyUSB1 vid_pid=10c4:ea60 usb_serial=A1")


def test_link_config_by_usb_identity(tmp_path):
    cfg = tmp_path / "gw.toml"
    head = '[gateway]\nid = "g"\nsite = "s"\n'
    cfg.write_text(head + '[[link]]\ntype = "serial"\nusb_serial = "A1"\n'
                   '[[link]]\ntype = "serial"\nvid_pid = "10C4:EA60"\nbaudrate = 921600\n'
                   '[[link]]\ntype = "serial"\nport = "/dev/ttyUSB9"\n')
    c = load(cfg)
    assert [(lk.port, lk.usb_serial, lk.vid_pid, lk.name) for lk in c.links] == [
        (None, "A1", None, "usb:serial=A1"), (None, None, "10c4:ea60", "usb:10c4:ea60"),
        ("/dev/ttyUSB9", None, None, "/dev/ttyUSB9")]
    links = make_links(c)
    assert [lk.port for lk in links] == ["usb:serial=A1", "usb:10c4:ea60", "/dev/ttyUSB9"]
    assert links[1].usb == UsbMatch(None, "10c4:ea60") and links[2].usb is None

    for extra, expected in [
        ('port = "/dev/x"\nvid_pid = "10c4:ea60"\n',
         "link[0].vid_pid: set either port or usb_serial / vid_pid, not both (port = '/dev/x')"),
        ('vid_pid = "10c4-ea60"\n', 'link[0].vid_pid: must be "VVVV:PPPP" (4 hex digits each,'
                                    ' e.g. "10c4:ea60"), got \'10c4-ea60\''),
        ('usb_serial = ""\n', "link[0].usb_serial: must be a non-empty string, got ''"),
        ("", "link[0].port: missing; set port (a device path such as \"/dev/ttyUSB0\") or"
             " usb_serial and/or vid_pid"),
    ]:
        cfg.write_text(head + '[[link]]\ntype = "serial"\n' + extra)
        with pytest.raises(ConfigError) as exc:
            load(cfg)
        assert str(exc.value) == expected
    cfg.write_text(head + '[[link]]\ntype = "serial"\nusb_serial = "A1"\n' * 2)
    with pytest.raises(ConfigError, match=r"link\[1\].usb_serial: 'usb:serial=A1' is listed"):
        load(cfg)


def test_link_follows_its_adapter_after_a_replug_under_another_path(tmp_path, ports, caplog,
                                                                    fake_node):
    caplog.set_level(logging.INFO, logger="roadside.gateway")
    first, second = fake_node, type(fake_node)()     # two FakeNodes (conftest), two ptys
    assert first.path != second.path     # the kernel renumbered the adapter

    async def main():
        queue = Queue(tmp_path / "q.sqlite")
        sessions = SessionManager(queue)
        link = SerialLink("", usb=UsbMatch("A1", "10c4:ea60"), retry_s=0.05)
        # Another adapter with the same VID:PID but another serial: never picked.
        ports[:] = [port("/dev/ttyUSB7", serial="ZZ")]
        await link.open()
        serve = asyncio.create_task(sessions.serve(link))
        try:
            await wait_state(link, base.MISSING)
            assert link.last_error == "no USB serial port matches usb:10c4:ea60,serial=A1"
            ports.append(port(first.path, serial="A1"))            # plugged in
            # pyserial flushes the input on open, but OPEN is set only after its open has
            # returned: a HELLO from here on is read (no sleep needed).
            await wait_state(link, base.OPEN)
            assert link.device == first.path and link.port == "usb:10c4:ea60,serial=A1"
            first.hello("wl-0003")
            await first.expect(p.Ack, seq=0)
            first.records([1, 2])
            await first.expect(p.Ack, seq=2)

            ports[:] = [port("/dev/ttyUSB7", serial="ZZ")]        # unplugged ...
            first.close()
            await wait_state(link, base.MISSING)
            ports.append(port(second.path, serial="A1"))           # ... back, renumbered
            await wait_state(link, base.OPEN)
            assert link.device == second.path
            second.hello("wl-0003", next_seq=3, first_unacked=3)
            await second.expect(p.Ack, seq=2)
            second.records([3])
            await second.expect(p.Ack, seq=3)
            doc = Status("g", "s", queue, sessions, [link], []).document()
            assert doc["links"][0]["device"] == second.path
            assert doc["nodes"][0]["records"] == 3 and doc["nodes"][0]["link"] == "up"
        finally:
            serve.cancel()
            await link.close()
            queue.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 20))
    finally:
        first.close()
        second.close()
    text = caplog.text
    assert text.count("no USB serial port matches") == 2     # once per outage, not per retry
    assert f"is {first.path}" in text and f"is {second.path}" in text


async def wait_state(link, state, timeout=5.0):
    for _ in range(int(timeout / 0.02)):
        if link.state == state:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"link {link.port} is {link.state}, never {state}")


def test_silent_node_is_reported_once_and_shown(tmp_path, fake_node, caplog):
    caplog.set_level(logging.INFO, logger="roadside.gateway")
    clock = [1000.0]

    async def main():
        queue = Queue(tmp_path / "q.sqlite")
        sessions = SessionManager(queue, mono=lambda: clock[0])
        link = SerialLink(fake_node.path, retry_s=0.05)
        await link.open()
        serve = asyncio.create_task(sessions.serve(link))
        status = Status("g", "s", queue, sessions, [link], [])
        try:
            await wait_state(link, base.OPEN)     # after pyserial's open (and its flush)
            fake_node.hello("wl-0005")
            await fake_node.expect(p.Ack, seq=0)
            assert sessions.check_silent() == []
            clock[0] += sessions.silent_s + 1
            assert sessions.check_silent() == ["wl-0005"]
            assert sessions.check_silent() == ["wl-0005"]
            assert status.document()["nodes"][0]["link"] == "silent"
            fake_node.records([1])
            await fake_node.expect(p.Ack, seq=1)
            assert sessions.check_silent() == []
            assert status.document()["nodes"][0]["link"] == "up"
        finally:
            serve.cancel()
            await link.close()
            queue.close()

    asyncio.run(asyncio.wait_for(main(), 20))
    warnings = [r for r in caplog.records if "is silent" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert warnings[0].getMessage().startswith(
        f"node wl-0005 on {fake_node.path} is silent: nothing heard for 61 s")
    assert caplog.text.count("node wl-0005 is heard again") == 1
