"""Over-the-air updates on a whole simulated node (sim_main.py under MicroPython, its LittleFS
flash image) with tests/support/ota_driver.py as the gateway's sender (PROTOCOL.md 2.6): an
app update staged, switched, on trial and confirmed; a transfer cut (link gone, node killed)
resumes at `have`; a bundle that raises at import rolls back; refusals with their reason."""

from __future__ import annotations

import os
import shutil

import pytest
from roadside.gateway import ota_bundle
from roadside.tools.ota import bundle as builder
from roadside.tools.sim.cddl import protocol_schema
from support.ota_driver import OtaDriver
from test_session import Gateway

KEY = bytes(range(32))
RUNNING = "0.1.0"  # firmware/roadside_node/__init__.py VERSION


@pytest.fixture(scope="module")
def app_files() -> dict[str, bytes]:
    return builder.compile_package(builder.PACKAGE, "0.2.0", with_sim=True)


def make(files: dict[str, bytes], version: str = "0.2.0", boards=("sim",),
         roles=("water",), key: bytes = KEY) -> ota_bundle.Bundle:
    return ota_bundle.make("app", version, ota_bundle.archive(files), key=key,
                           boards=list(boards), roles=list(roles), files=len(files),
                           created="2026-12-03T06:00:00Z")


@pytest.fixture
def gw(tmp_path):
    g = Gateway(tmp_path / "node", role="water")
    g.set_sim(scenario=str(builder.launcher.SCENARIOS / "water" / "calm.json"))
    g.flash.put("ota.key", KEY)
    g.heapsize = os.environ.get("OTA_HEAP", g.heapsize)
    g.other = []
    try:
        yield g
    finally:
        g.kill()
        os.close(g.master)


def boot(g: Gateway) -> dict:
    """Start the node, answer its HELLO (TIME, ACK): the session is up."""
    g.buf = b""
    g.start()
    hello = g.expect(1, timeout=15)
    g.send({0: 6, 1: 1795420800000})
    g.send({0: 3, 1: hello[9] - 1})
    return hello


def reset_exit(g: Gateway, timeout: float = 20) -> int:
    assert g.proc is not None
    return g.proc.wait(timeout=timeout)


def test_app_update_staged_switched_confirmed(gw, app_files):
    b = make(app_files)
    hello = boot(gw)
    assert hello[3] == RUNNING
    d = OtaDriver(gw, b)
    st = d.transfer()
    assert st[2] == "staged" and st[1] == b.tag and st[3] == len(b.payload), st
    schema = protocol_schema()
    for s in d.states:
        schema.validate(s, "ota-state")
    r = d.switch()
    assert r[2] is True and r[3]["version"] == "0.2.0", r
    assert reset_exit(gw) == 3                                 # the reboot into the trial
    boot_json = gw.read_json("ota/boot.json")
    assert boot_json["trial"]["version"] == "0.2.0" and boot_json["trial"]["boots"] == 0
    hello = boot(gw)
    assert hello[3] == "0.2.0"                                 # the new app runs
    d2 = OtaDriver(gw, b)
    trial = d2.state(timeout=10)
    assert trial[2] == "trial" and trial[5] == "0.2.0" and trial[1] == b.tag
    done = d2.state(timeout=30)                                # records acked: healthy
    assert done[2] == "done" and done[5] == "0.2.0", done
    gw.kill()
    boot_json = gw.read_json("ota/boot.json")
    assert boot_json["app"] == "a" and "trial" not in boot_json
    assert boot_json["report"]["state"] == "done" and boot_json["report"]["told"]
    assert boot(gw)[3] == "0.2.0"                              # and it stays
    assert d2.command("ota.state")[2] is True
    assert d2.states[-1][2] == "done"


def test_transfer_resumes_after_link_loss_and_node_reboot(gw, app_files):
    b = make(app_files)
    size = len(b.payload)
    boot(gw)
    d = OtaDriver(gw, b)
    st = d.offer()
    assert st[2] == "receiving" and st[3] == 0
    st = d.push(0, stop_at=size // 4)                          # then the link goes quiet
    cut = st[3]
    assert 0 < cut < size
    st = OtaDriver(gw, b).offer()                              # the same tag again
    assert st[2] == "receiving" and st[3] >= cut
    d.push(st[3], stop_at=size // 2)
    gw.kill()                                                  # the node loses power
    boot(gw)
    d2 = OtaDriver(gw, b)
    st = d2.offer()
    assert st[2] == "receiving" and size // 4 <= st[3] < size, st
    resumed = st[3]
    st = d2.push(resumed)
    assert st[2] == "staged", st
    assert d2.chunks_sent <= (size - resumed) // 512 + 12      # from have, not from 0


def test_bundle_that_raises_at_import_rolls_back(gw, app_files, tmp_path):
    src = tmp_path / "pkg"
    shutil.copytree(builder.PACKAGE, src)
    (src / "app.py").write_text((src / "app.py").read_text()
                                + "\nraise RuntimeError('broken build')\n")
    broken = builder.compile_package(src, "0.3.0", with_sim=True)
    b = make(broken, version="0.3.0")
    boot(gw)
    d = OtaDriver(gw, b)
    assert d.transfer()[2] == "staged"
    assert d.switch()[2] is True
    assert reset_exit(gw) == 3
    gw.start()                                                 # the trial: dies at import
    assert reset_exit(gw) == 3
    assert "broken build" in gw.log.read_text()
    boot_json = gw.read_json("ota/boot.json")
    assert "trial" not in boot_json and boot_json.get("app") is None
    assert boot_json["report"] == {"state": "rolled_back", "tag": b.tag.hex(),
                                   "version": "0.3.0", "reason": "import"}  # not yet told
    hello = boot(gw)
    assert hello[3] == RUNNING                                 # the old app again
    st = OtaDriver(gw, b).state(timeout=10)
    assert st[2] == "rolled_back" and st[4] == "import" and st[5] == RUNNING, st


def test_too_many_trial_boots_roll_back(gw, app_files):
    gw.flash.run("import os\nos.mkdir('ota')\n")
    gw.flash.put_json("ota/boot.json", {"app": None, "trial": {
        "slot": "a", "tag": "00" * 8, "version": "0.2.0", "kind": "app", "size": 1,
        "boots": 2}})
    hello = boot(gw)
    assert hello[3] == RUNNING
    st = OtaDriver(gw, make(app_files)).state(timeout=10)
    assert st[2] == "rolled_back" and st[4] == "boot"


def test_refusals(gw, app_files):
    boot(gw)
    good = make(app_files)

    def offer(b: ota_bundle.Bundle, force: bool = False) -> dict:
        return OtaDriver(gw, b).offer(force)

    bad_mac = make(app_files, key=bytes(32))
    st = offer(bad_mac)
    assert (st[2], st[3], st[4]) == ("refused", 0, "signature")
    protocol_schema().validate(st, "ota-state")
    st = offer(make(app_files, boards=("esp32-devkitc-v4",)))
    assert (st[2], st[4]) == ("refused", "board")
    st = offer(make(app_files, roles=("toll",)))
    assert (st[2], st[4]) == ("refused", "role")
    older = make(app_files, version="0.0.9")
    st = offer(older)
    assert (st[2], st[4]) == ("refused", "version")
    assert offer(older, force=True)[2] == "receiving"          # forced: allowed
    # a tampered piece: a chunk with other bytes; 3 bad pieces drop the transfer
    st = offer(good)
    assert st[2] == "receiving" and st[3] == 0
    bad = ota_bundle.Bundle(good.kind, good.manifest_bytes, good.mac,
                            bytes(len(good.payload)), good.manifest)
    d = OtaDriver(gw, bad)
    st = d.push(0)
    assert (st[2], st[4]) == ("refused", "tampered"), d.states[-5:]
    assert "piece 0 bad (3 in this transfer)" in gw.log.read_text()
    st = offer(good)                                           # a good one starts afresh
    assert st[2] == "receiving" and st[3] == 0
