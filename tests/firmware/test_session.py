"""A whole simulated node (firmware/sim_main.py under MicroPython) over a real pty pair, with
this test as the gateway (cbor2 + cobs): hello, time, records, acks, go-back-N, commands,
errors, a corrupt frame, kill -9 and restart."""

from __future__ import annotations

import binascii
import errno
import json
import os
import select
import signal
import struct
import subprocess
import time
import tty
from pathlib import Path

import cbor2
import pytest
from cobs import cobs
from roadside.tools.sim.launcher import HEAPSIZE, build_mpy, write_node
from roadside.tools.sim.vflash import fs_blocks
from support.micropython import FIRMWARE, MICROPYTHON

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "water" / "flood.json"


def frame(msg: dict) -> bytes:
    payload = cbor2.dumps(msg)
    return cobs.encode(payload + struct.pack("<I", binascii.crc32(payload))) + b"\x00"


class Gateway:
    def __init__(self, node_dir: Path, **config) -> None:
        self.dir = node_dir
        self.master, slave = os.openpty()
        tty.setraw(self.master)
        self.path = os.ttyname(slave)
        os.close(slave)
        # the node's flash (an image: config.json, journal, state) and its wiring (outside)
        self.sim = {"uart": self.path, "scenario": str(SCENARIO), "speed": 20, "seed": 3}
        cfg = {"node_id": "wl-0042", "role": "water", "board": "sim", **config}
        self.flash = write_node(node_dir, cfg, self.wiring())
        self.buf = b""
        self.proc: subprocess.Popen | None = None
        self.log = node_dir / "node.log"
        self.heapsize = HEAPSIZE  # an ESP32 without PSRAM; precompiled firmware (build_mpy)

    def wiring(self) -> dict:
        return {"board": "sim", "blocks": fs_blocks(), "sim": self.sim}

    def set_sim(self, **sim) -> None:
        """Change the node's wiring (scenario, speed, ...): takes effect at the next start."""
        self.sim.update(sim)
        (self.dir / "wiring.json").write_text(json.dumps(self.wiring()))

    def read_json(self, name: str):
        """A JSON file from the node's flash image. A running node saves its state as
        state.json -> state.bak, then state.json.tmp -> state.json: a read between the two
        renames finds no state.json, and is made again."""
        for _ in range(10):
            try:
                return self.flash.get_json(name)
            except FileNotFoundError:
                if self.proc is None or self.proc.poll() is not None:
                    raise
        return self.flash.get_json(name)

    def write_json(self, name: str, doc) -> None:
        """Put a JSON file into the node's flash (the node must be stopped)."""
        self.flash.put_json(name, doc)

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(MICROPYTHON), "-X", f"heapsize={self.heapsize}",
                 str(FIRMWARE / "sim_main.py"), str(self.dir), str(build_mpy())],
                cwd=self.dir, stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def send(self, msg: dict | bytes) -> None:
        os.write(self.master, msg if isinstance(msg, bytes) else frame(msg))

    def recv(self, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            while b"\x00" in self.buf:
                f, self.buf = self.buf.split(b"\x00", 1)
                if f:
                    raw = cobs.decode(f)
                    assert struct.pack("<I", binascii.crc32(raw[:-4])) == raw[-4:]
                    return cbor2.loads(raw[:-4])
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"nothing from the node; log:\n{self.log.read_text()}")
            r, _, _ = select.select([self.master], [], [], min(left, 0.1))
            if r:
                try:
                    self.buf += os.read(self.master, 4096)
                except OSError as e:  # EIO while no process has the slave open
                    if e.errno != errno.EIO:
                        raise
                    time.sleep(0.05)

    def skip_sent(self) -> None:
        """Drop every whole frame the node has sent so far (the next recv is one sent after)."""
        while select.select([self.master], [], [], 0)[0]:
            try:
                self.buf += os.read(self.master, 4096)
            except OSError as e:
                if e.errno != errno.EIO:
                    raise
                break
        self.buf = self.buf[self.buf.rfind(b"\x00") + 1:]   # a partial frame is kept

    def wait_state(self, ok, what: str, timeout: float = 10.0) -> dict:
        """state.json from the running node's flash once ok(state) holds; bounded."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.read_json("state.json")
            if ok(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout} s; state {state}; log:\n"
                                     f"{self.log.read_text()}")
            time.sleep(0.05)

    def wait_log(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout} s; log:\n"
                                     f"{self.log.read_text()}")
            time.sleep(0.05)

    def expect(self, mtype: int, timeout: float = 5.0) -> dict:
        """The next message of that type (others in between are collected in self.other)."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.recv(max(0.01, deadline - time.monotonic()))
            if m[0] == mtype:
                return m
            self.other.append(m)

    other: list = []


@pytest.fixture
def gw(tmp_path):
    g = Gateway(tmp_path / "node")
    g.other = []
    try:
        yield g
    finally:
        g.kill()
        os.close(g.master)


def test_session_records_acks_commands_and_restart(gw):
    gw.start()
    hello = gw.expect(1)
    assert hello[1] == "wl-0042" and hello[2] == "water" and hello[4] == "sim"
    assert hello[6] == "power_on" and hello[7] == 1 and hello[8] == 1 and hello[9] == 1
    gw.send(b"\x13\x37garbage\x00")                          # a corrupt frame: skipped
    gw.send({0: 6, 1: 1795420800123})
    gw.send({0: 3, 1: 0})
    first = gw.expect(2)
    assert first[1] == 1 and first[2][0][0] == 1
    rec = first[2][0]
    # made before TIME: seconds since boot with CLOCK_UNSYNCED; after: epoch seconds
    assert rec[1] < 100 if rec[3] & 1 else rec[1] >= 1795420800
    # no ACK: the node goes back and sends seq 1 again after its ACK timer (at least 300 ms,
    # from the round trips it measured, at most ACK_TIMEOUT)
    t0 = time.monotonic()
    seen = [r[0] for r in first[2]]
    while True:
        m = gw.expect(2, timeout=6)
        if m[2] and m[2][0][0] == 1:
            break
        seen += [r[0] for r in m[2]]
    assert 0.25 < time.monotonic() - t0 < 5
    assert seen == list(range(1, len(seen) + 1))
    gw.send({0: 3, 1: 2})
    gw.send({0: 99, 1: 1})                                    # unknown type
    err = gw.expect(7)
    assert err[1] == 1 and err[3] == 99
    gw.send({0: 4, 1: 77, 2: "ping"})
    assert gw.expect(5) == {0: 5, 1: 77, 2: True, 3: "pong"}
    gw.send({0: 4, 1: 77, 2: "ping"})                         # a retry: same answer
    assert gw.expect(5) == {0: 5, 1: 77, 2: True, 3: "pong"}
    gw.send({0: 4, 1: 78, 2: "fly"})
    bad = gw.expect(5)
    assert bad[1] == 78 and bad[2] is False and "unknown command 'fly'" in bad[4]
    gw.send({0: 4, 1: 79, 2: "config.set", 3: {"key": "alert_cm", "value": "high"}})
    bad = gw.expect(5)
    assert bad[2] is False and "alert_cm: bad value 'high'" in bad[4]
    gw.send({0: 4, 1: 80, 2: "info"})
    info = gw.expect(5)[3]
    assert info["node"] == "wl-0042" and info["boot_count"] == 1
    gw.send({0: 3, 1: 2})
    # the node has saved that ACK and counts at least 3 records as produced
    gw.wait_state(lambda st: st["acked"] == 2 and st["next_seq"] - 1 >= 3, "ACK 2 saved")
    gw.kill()
    produced = gw.read_json("state.json")["next_seq"] - 1
    assert produced >= 3

    gw.other = []
    gw.start()
    hello = gw.expect(1)
    assert hello[9] == 3 and hello[7] > produced and hello[5] == 2
    gw.send({0: 6, 1: 1795420900000})
    gw.send({0: 3, 1: 2})
    m = gw.expect(2)
    assert m[1] == 3 and m[2][0][0] == 3                      # unacked ones resent first
    seqs = [r[0] for r in m[2]]
    deadline = time.monotonic() + 5
    while seqs[-1] <= produced + 1 and time.monotonic() < deadline:
        m = gw.expect(2)
        seqs += [r[0] for r in m[2]]
        gw.send({0: 3, 1: seqs[-1]})
    assert seqs == list(range(3, seqs[-1] + 1))               # in order, no seq reused
    assert seqs[-1] > produced + 1


def test_records_before_hello_answer_and_error_3_trigger_hello(gw):
    gw.start()
    gw.expect(1)
    gw.send({0: 7, 1: 3, 2: "send HELLO first"})
    assert gw.expect(1, timeout=3)[0] == 1
    gw.send({0: 3})                                           # ACK without its seq
    err = gw.expect(7)
    assert err[1] == 2 and err[3] == 3
    gw.send({0: 4, 1: 5, 2: "config.set", 3: {"key": "report_interval_s", "value": 30}})
    assert gw.expect(5) == {0: 5, 1: 5, 2: True, 3: 30}
    gw.send({0: 4, 1: 6, 2: "reboot"})
    assert gw.expect(5) == {0: 5, 1: 6, 2: True, 3: True}
    assert gw.proc.wait(timeout=5) == 3                       # EXIT_RESET
    assert gw.read_json("config.json")["report_interval_s"] == 30
    gw.start()
    hello = gw.expect(1)
    assert hello[6] == "soft" and hello[5] == 2


def test_full_journal_refuses_then_drains_within_the_window(tmp_path):
    g = Gateway(tmp_path / "node", journal_max_bytes=2048, health_interval_s=60,
                fast_interval_s=2, report_interval_s=2)
    g.set_sim(speed=100)
    g.other = []
    try:
        g.start()
        g.expect(1)
        g.wait_log("journal full: dropped")    # no gateway: the journal fills up
        g.skip_sent()
        hello = g.expect(1, timeout=10)    # the node says HELLO again (every 3 s)
        assert hello[9] == 1 and hello[7] > 30
        g.send({0: 6, 1: 1795420800000})
        g.send({0: 3, 1: 0})
        seqs: list[int] = []
        health = []
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and (not seqs or seqs[-1] < hello[7] + 5):
            m = g.expect(2)
            got = [r[0] for r in m[2]]
            assert m[1] <= got[0]
            if got[0] != (seqs[-1] + 1 if seqs else 1):
                continue                   # a go-back resend of what we have not acked yet
            seqs += got
            health += [r[4] for r in m[2] if r[2] == 3]
            assert seqs[-1] - m[1] < 32    # never more than WINDOW unacked in flight
            g.send({0: 3, 1: seqs[-1]})
        assert seqs == list(range(1, seqs[-1] + 1)) and seqs[-1] >= hello[7] + 5
        log = g.log.read_text()
        assert "journal full: dropped" in log
        state = g.read_json("state.json")
        assert state["dropped_full"] > 0
        # free heap stays healthy through a full journal (in the board's terms:
        # tools/sim/launcher.py HEAPSIZE; ~38.7k measured after issues 9 and 10)
        assert health and all(h[1] > 32000 for h in health)
    finally:
        g.kill()
        os.close(g.master)
