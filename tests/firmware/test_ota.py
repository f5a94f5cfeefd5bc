"""Over-the-air updates on a whole simulated node (sim_main.py under MicroPython, its LittleFS
flash image) with tests/support/ota_driver.py as the gateway's sender (PROTOCOL.md 2.6): an
app update staged, switched, on trial and confirmed; a transfer cut (link gone, node killed)
resumes at `have`; a bundle that raises at import rolls back; refusals with their reason."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from roadside.gateway import ota_bundle
from roadside.tools.ota import bundle as builder
from roadside.tools.sim.cddl import protocol_schema
from roadside.tools.sim.launcher import write_node
from support.bare_session import SESSION
from support.micropython import run_stdout
from support.ota_driver import OtaDriver
from test_session import Gateway

KEY = bytes(range(32))
RUNNING = "0.1.0"  # firmware/roadside_node/__init__.py VERSION


@pytest.fixture(scope="module")
def app_files() -> dict[str, bytes]:
    return builder.compile_package(builder.PACKAGE, "0.2.0", with_sim=True)


def make(files: dict[str, bytes], version: str = "0.2.0", boards=("sim",),
         roles=("water",), key: bytes = KEY, min_free: int | None = None) -> ota_bundle.Bundle:
    return ota_bundle.make("app", version, ota_bundle.archive(files), key=key,
                           boards=list(boards), roles=list(roles), files=len(files),
                           created="2026-12-03T06:00:00Z", min_free=min_free)


@pytest.fixture
def gw(tmp_path):
    g = Gateway(tmp_path / "node", role="water")
    g.set_sim(scenario=str(builder.launcher.SCENARIOS / "water" / "calm.json"))
    write_node(g.dir, g.flash.get_json("config.json"), g.wiring(), g.flash, ota_key=KEY)
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


def unpack_boot(g: Gateway) -> dict:
    """The boot after an app's switch: the loader unpacks it (otaunpack.py) and resets; the
    trial as ota/boot.json then has it."""
    assert g.read_json("ota/boot.json")["trial"]["unpack"]
    g.start()
    assert reset_exit(g) == 3
    t = g.read_json("ota/boot.json")["trial"]
    assert "unpack" not in t and g.flash.exists("ota/" + t["slot"] + "/roadside_node/app.mpy")
    return t


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
    trial = unpack_boot(gw)                                    # the loader unpacks it
    assert trial["version"] == "0.2.0" and trial["boots"] == 0
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
    assert d.command("ota.switch", {"tag": b.tag.hex()})[2] is True  # hex: as JSON APIs do
    assert reset_exit(gw) == 3
    unpack_boot(gw)
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
    assert "ota/" not in gw.flash.ls("/")                      # no loader at boot for that
    st = offer(make(app_files, boards=("esp32-devkitc-v4",)))
    assert (st[2], st[4]) == ("refused", "board")
    st = offer(make(app_files, roles=("toll",)))
    assert (st[2], st[4]) == ("refused", "role")
    older = make(app_files, version="0.0.9")
    st = offer(older)
    assert (st[2], st[4]) == ("refused", "version")
    assert offer(older, force=True)[2] == "receiving"          # forced: allowed
    st = offer(make(app_files, min_free=64 << 20))             # more than the 2 MiB flash
    assert (st[2], st[4]) == ("refused", "space")
    assert "needs 67108864 bytes of flash" in gw.log.read_text()
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


SWEEP = r"""
import json
import os
import sys
sys.path.insert(0, "/")
import otaboot
import otaunpack
from vboard.power_cut import _Cut, _Dev, mount, unmount
from roadside_node.ota import Ota

with open(ARGS) as f:
    a = json.load(f)
with open(a["image"], "rb") as f:
    image = f.read()
tag = bytes.fromhex(a["tag"])


class S:  # the little of a Session the switch uses
    guard = None
    fw = "0.1.0"
    reboot_pending = False

    def log(self, text):
        pass

    def send(self, payload):
        pass


def slot_whole(slot):
    import hashlib
    for name, digest in a["files"].items():
        try:
            with open("ota/" + slot + "/" + name, "rb") as f:
                if hashlib.sha256(f.read()).digest().hex() != digest:
                    return False
        except OSError:
            return False
    return True


n = 1
while True:
    dev = _Dev(image)
    pc = _Cut(dev, None)
    mount(pc)
    pc.cut_at = n
    try:
        Ota(S()).switch(tag)
        otaunpack.unpacked(otaboot.read())  # the boot after it: the loader unpacks the app
    except Exception:
        if not pc.dead:
            raise
    unmount()
    cut = pc.dead
    mount(_Dev(dev.image()))  # the power is back: what does the loader boot?
    b = otaunpack.unpacked(otaboot.read())
    t = b.get("trial")
    if t is None and b.get("app") is None:
        boots = "old"
    elif t is not None and t["slot"] == "a" and slot_whole("a"):
        boots = "new"
    else:
        boots = "BROKEN %r" % (b,)
    unmount()
    print("cut", n if cut else 0, boots)
    if not cut:
        break
    n += 1
"""


def test_power_cut_at_every_write_of_the_switch_boots_old_or_new(gw, app_files, tmp_path):
    import hashlib
    import json

    from support.micropython import run

    # a few files (the switch writes the same way for 4 or 40: slot emptied, files, pointer)
    files = {n: d for n, d in sorted(app_files.items())[:4]}
    files["roadside_node/roles/water.mpy"] = app_files["roadside_node/roles/water.mpy"]
    b = make(files)
    boot(gw)
    assert OtaDriver(gw, b).transfer()[2] == "staged"
    gw.kill()                                                  # staged, on flash
    args = {"image": str(gw.dir / "flash.img"), "tag": b.tag.hex(),
            "files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}}
    (tmp_path / "args.json").write_text(json.dumps(args))
    out = run(f"ARGS = {str(tmp_path / 'args.json')!r}\n" + SWEEP, heapsize="16m",
              timeout=240).stdout.decode()
    lines = [ln.split() for ln in out.splitlines() if ln.startswith("cut")]
    outcomes = [ln[2] for ln in lines]
    assert lines[-1][:2] == ["cut", "0"] and outcomes[-1] == "new"  # uncut: the trial
    assert len(lines) > 20 and set(outcomes) == {"old", "new"}, out[-2000:]
    flip = outcomes.index("new")                               # old until the pointer lands
    assert outcomes[flip:] == ["new"] * (len(outcomes) - flip), out[-2000:]


VECTORS = r"""
import json
from roadside_node import cbor
from roadside_node.ota import Ota

with open(ARGS) as f:
    v = {x["name"]: x for x in json.load(f)["valid"]}
with open("ota.key", "wb") as f:
    f.write(bytes(range(32)))


class Cfg:
    def get(self, k):
        return {"board": "sim", "role": "water"}[k]


class J:
    first_unacked = 1


class S:
    guard = None
    fw = "0.1.0"
    role = None  # a Session's before the App sets it (the offer reads its alarm state)
    prio_seq = 0
    errors_in = 0
    config = Cfg()
    journal = J()
    sent = []

    def log(self, text):
        pass

    def send(self, payload):
        self.sent.append(payload.hex())


def msg(name):
    return cbor.loads(bytes.fromhex(v[name]["payload"]))


s = S()
o = Ota(s)
o.state()
print("idle", s.sent[-1] == v["ota-state-idle"]["payload"])
m = msg("ota-offer")
o.on_message(10, m)
print("receiving-0", cbor.loads(bytes.fromhex(s.sent[-1])) == {0: 12, 1: o.tag,
                                                                  2: "receiving", 3: 0,
                                                                  5: "0.1.0"})
o.on_message(11, msg("ota-chunk"))
o.state()
print("receiving", s.sent[-1] == v["ota-state-receiving"]["payload"])
"""


def test_the_node_answers_the_ota_vectors_byte_for_byte(tmp_path):
    from support.micropython import run

    vectors = Path(__file__).resolve().parents[1] / "vectors" / "ota.json"
    out = run(f"ARGS = {str(vectors)!r}\n" + VECTORS, cwd=tmp_path, heapsize="2m").stdout
    assert out.decode().split() == ["idle", "True", "receiving-0", "True", "receiving",
                                    "True"], out


PARTITION = r"""
import sys
from vboard import vesp32, vpartition
sys.modules["esp32"] = vesp32
vesp32.ROOT = ROOT
from roadside_node import cbor
from roadside_node.ota import Ota


class Cfg:
    def get(self, k):
        return {"board": "esp32-devkitc-v4", "role": "water"}[k]


class J:
    first_unacked = 1


class G:
    ota = None  # bootguard.BootGuard: no update on trial


class S:
    guard = G()
    fw = "0.1.0"
    role = None
    prio_seq = 0
    errors_in = 0
    reboot_pending = False
    config = Cfg()
    journal = J()
    last = None

    def log(self, text):
        pass

    def send(self, payload):
        self.last = cbor.loads(payload)


def transfer():
    s = S()
    o = Ota(s)
    with open(MSGS, "rb") as f:
        while True:
            head = f.read(4)
            if not head:
                break
            m = cbor.loads(f.read(int.from_bytes(head, "little")))
            o.on_message(m[0], m)
    return o, s


print("boot", vesp32.bootloader())
print("partition", vesp32.Partition(vesp32.Partition.RUNNING).info())
o, s = transfer()
print("state", s.last[2], s.last[3])
o.switch(s.last[1])
p = vesp32.Partition("ota_1")
buf = bytearray(SIZE)
p.readblocks(0, buf)
with open(IMAGE, "rb") as f:
    print("written", bytes(buf) == f.read())
print("boot", vesp32.bootloader(), vpartition._load()["states"]["ota_1"])  # the trial
print("boot", vesp32.bootloader(), vpartition._load()["states"]["ota_1"])  # never marked valid
o, s = transfer()
o.switch(s.last[1])
print("boot", vesp32.bootloader())
o.confirm()  # a healthy session: esp32.Partition.mark_app_valid_cancel_rollback()
print("confirmed", s.last[2], vpartition._load()["states"]["ota_1"])
print("boot", vesp32.bootloader())
print("running", vesp32.Partition(vesp32.Partition.RUNNING).info()[4],
      vesp32.Partition(vesp32.Partition.RUNNING).get_next_update().info()[4])
"""


def test_firmware_bundle_through_the_partition_twin_and_the_rollback_rule(tmp_path):
    import struct

    import cbor2
    from roadside.tools.sim import virtual_rom
    from support.micropython import run

    image = virtual_rom.build_test_image("esp32", tmp_path / "micropython.bin", 200 * 1024)
    b = builder.build_firmware(KEY, image, "99.0.0", ["esp32-devkitc-v4"])
    msgs = [b.offer()] + [b.chunk(at) for at in range(0, len(b.payload), 512)]
    with open(tmp_path / "msgs.bin", "wb") as f:
        for m in msgs:
            raw = cbor2.dumps(m)
            f.write(struct.pack("<I", len(raw)) + raw)
    (tmp_path / "ota.key").write_bytes(KEY)
    code = (f"ROOT = {str(tmp_path / 'flash')!r}\nMSGS = {str(tmp_path / 'msgs.bin')!r}\n"
            f"IMAGE = {str(image)!r}\nSIZE = {len(b.payload)}\n" + PARTITION)
    out = run(code, cwd=tmp_path, heapsize="4m", timeout=120).stdout.decode().splitlines()
    assert out == ["boot ota_0", "partition (0, 16, 65536, 1572864, 'ota_0', False)",
                   f"state staged {len(b.payload)}", "written True",
                   "boot ota_1 pending_verify",            # the trial boot
                   "boot ota_0 aborted",                   # reset unconfirmed: rolled back
                   "boot ota_1", "confirmed done valid",
                   "boot ota_1",                           # marked valid: it stays
                   "running ota_1 ota_0"], out


def test_a_node_in_an_alarm_burst_answers_busy(gw, app_files):
    gw.set_sim(scenario=str(builder.launcher.SCENARIOS / "water" / "flood.json"), speed=60)
    boot(gw)                                                   # nothing acked from here
    deadline = time.monotonic() + 20
    alarm = None
    while alarm is None:
        assert time.monotonic() < deadline, "no alarm record from the flood scenario"
        m = gw.expect(2, timeout=10)
        alarm = next((r for r in m[2] if r[3] & 2), None)      # a PRIORITY record, unacked
    d = OtaDriver(gw, make(app_files))
    st = d.offer()
    assert (st[2], st[4]) == ("refused", "busy"), st
    gw.send({0: 3, 1: 10_000})                                 # all acked: a gateway caught up
    deadline = time.monotonic() + 10
    while True:
        st = d.offer()
        if st[2] == "receiving" or time.monotonic() > deadline:
            break
    assert st[2] == "receiving", st


def test_a_node_whose_role_is_in_alarm_answers_busy_with_every_record_acked(gw, app_files,
                                                                          tmp_path):
    # The water level at alarm height for 60 simulated seconds, then dry: the role's state
    # (ble.py's alarm flag) holds the offer off while it lasts, not only an unacked record;
    # a forced offer is taken (a fault the update fixes), the other bundle's once it is dry.
    scenario = tmp_path / "burst.json"
    scenario.write_text('{"points": [[0, 220], [60, 220], [70, 20], [9999, 20]]}')
    gw.set_sim(scenario=str(scenario), speed=10)
    boot(gw)
    d = OtaDriver(gw, make(app_files))
    deadline = time.monotonic() + 20
    while "ota: refused busy: the role is in alarm" not in gw.log.read_text():
        assert time.monotonic() < deadline, gw.log.read_text()[-1500:]
        st = d.offer()                                         # RECORDS acked on the way
        assert (st[2], st[4]) == ("refused", "busy"), st
    forced = OtaDriver(gw, make(app_files, version="0.2.1"))  # force: taken in the alarm
    assert forced.offer(force=True)[2] == "receiving"
    deadline = time.monotonic() + 30                           # the level falls: it goes on
    while True:
        st = d.offer()
        if st[2] == "receiving" or time.monotonic() > deadline:
            break
    assert st[2] == "receiving", (st, gw.log.read_text()[-1500:])


NO_SESSION = r"""
import os
import otaboot
from roadside_node.ota import Ota
os.mkdir("ota")
otaboot.write({"app": None, "trial": {"slot": "a", "tag": "00" * 8, "version": "0.2.0",
                                      "kind": "app", "size": 1, "boots": 1}})


class G:
    ota = otaboot.read()


class J:
    first_unacked = 5
    next_seq = 9


class S:
    guard = G()
    up = False  # the gateway never answers
    journal = J()
    fw = "0.2.0"

    def log(self, text):
        print(text)

    def send(self, payload):
        pass


o = Ota(S())
print("at 119 s", o.boot_step(119))
print("at 120 s", o.boot_step(120))
print(otaboot.read()["report"])
"""


def test_a_trial_without_a_healthy_session_in_120_s_is_rolled_back(tmp_path):
    from support.micropython import run

    out = run(NO_SESSION, cwd=tmp_path, heapsize="1m").stdout.decode()
    assert "at 119 s False" in out and "at 120 s True" in out, out
    assert "'reason': 'no_session'" in out and "'state': 'rolled_back'" in out, out


def test_a_memory_error_sheds_the_ota_code() -> None:
    """A node out of memory during an update drops the OTA code and state (Session.failure)
    instead of failing every message after; the next OTA message loads it again (and
    Ota.__init__ resumes a staged transfer at its last verified piece, as after a reboot:
    test_transfer_resumes_after_link_loss_and_node_reboot)."""
    out = run_stdout(SESSION + r"""
import sys
o = s.ota()
assert "roadside_node.ota" in sys.modules
s.failure(MemoryError())
assert s._ota is None and "roadside_node.ota" not in sys.modules, sys.modules
assert s.ota() is not o and "roadside_node.ota" in sys.modules     # loaded again
print("ok", logs[-1])
""")
    assert out.strip() == "ok message failed: MemoryError", out
