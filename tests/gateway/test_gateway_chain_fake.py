"""The whole gateway against Python go-back-N nodes on virtual cables (no MicroPython needed).

The daemon runs as a subprocess, the reference receiver fails 30 % of the POSTs, one cable has
noise, and the gateway is killed with SIGKILL and restarted: every record still arrives once,
in order. tests/e2e/ runs the same story with the real firmware.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tty
import urllib.request

from roadside.gateway import protocol as p
from roadside.tools.sim import procs
from roadside.tools.sim.gateway_toml import GatewaySettings, write
from roadside.tools.sim.receiver_store import read_seqs
from roadside.tools.sim.virtual_cable import VirtualCable

ACK_TIMEOUT_S = 0.5      # the firmware uses 2 s; shorter keeps the test fast
PER_MESSAGE = 8


class GoBackNNode:
    """A node as PROTOCOL.md 2.2 describes it: journal, window, go-back-N, HELLO on ERROR 3."""

    def __init__(self, node_id: str, path: str) -> None:
        self.id = node_id
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        self.decoder = p.FrameDecoder()
        self.produced = 0
        self.acked = 0
        self.next_send = 1
        self.last_progress = 0.0
        self.hellos = 0
        self.errors3 = 0

    def send(self, message: dict) -> None:
        data = p.encode_frame(message)
        try:
            os.write(self.fd, data)
        except BlockingIOError:
            pass   # like a UART with a full FIFO: the go-back-N resend covers it

    def hello(self) -> None:
        self.hellos += 1
        self.send({0: p.HELLO, 1: self.id, 2: "water", 3: "fake", 4: "sim", 5: 1,
                   6: "power_on", 7: self.produced + 1, 8: 1, 9: self.acked + 1})

    def on_readable(self) -> None:
        try:
            chunk = os.read(self.fd, 4096)
        except (BlockingIOError, OSError):
            return
        for payload in self.decoder.feed(chunk):
            try:
                m = p.decode_message(payload)
            except p.ProtocolError:
                continue
            if isinstance(m, p.Ack) and m.seq > self.acked:
                self.acked = m.seq
                self.next_send = max(self.next_send, self.acked + 1)
                self.last_progress = asyncio.get_running_loop().time()
            elif isinstance(m, p.Error) and m.code == p.ERR_NO_SESSION:
                self.errors3 += 1
                self.hello()

    def pump(self, now: float) -> None:
        if self.acked < self.produced and now - self.last_progress > ACK_TIMEOUT_S:
            self.next_send = self.acked + 1            # go back N
            self.last_progress = now
        while self.next_send <= self.produced and self.next_send - self.acked <= p.WINDOW:
            last = min(self.produced, self.next_send + PER_MESSAGE - 1, self.acked + p.WINDOW)
            recs = [[s, 1_795_420_800 + s, p.KIND_LEVEL, 0, {1: s / 4, 2: 0.0, 3: 1000 + s}]
                    for s in range(self.next_send, last + 1)]
            self.send({0: p.RECORDS, 1: self.acked + 1, 2: recs})
            self.next_send = last + 1

    async def run(self, total: int, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.fd, self.on_readable)
        try:
            self.hello()
            while not stop.is_set() or self.acked < self.produced:
                if self.produced < total:
                    self.produced += 1
                self.pump(loop.time())
                await asyncio.sleep(0.01)
        finally:
            loop.remove_reader(self.fd)
            os.close(self.fd)


def get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


def test_fake_nodes_noise_503s_and_kill_9_still_exactly_once(tmp_path, start_receiver):
    receiver = start_receiver(fail_rate=0.3, fail_seed=5)
    total = 400

    async def main() -> dict:
        cables = [VirtualCable(f"c{i}") for i in range(3)]
        for c in cables:
            await c.start()
        cfg = write(tmp_path / "gw.toml", [c.gateway_path for c in cables], tmp_path / "data",
                    receiver.batches_url, "127.0.0.1:0",
                    GatewaySettings(max_records=50, max_age_s=0.3))

        def start(n: int):
            log = tmp_path / f"gw{n}.log"
            proc = procs.spawn([sys.executable, "-m", "roadside.gateway.daemon", "--config",
                                str(cfg)], log)
            m = procs.wait_for_line(log, r"status on (http://\S+)", proc, 20)
            return proc, m.group(1)

        nodes = [GoBackNNode(f"wl-{i + 1:04d}", c.node_path) for i, c in enumerate(cables)]
        stop = asyncio.Event()
        proc, url = await asyncio.to_thread(start, 1)
        tasks = [asyncio.create_task(n.run(total, stop)) for n in nodes]
        try:
            await asyncio.sleep(1.0)
            cables[0].inject(b"\x00\x13\x37garbage\x00" * 3)
            cables[0].set_bit_flips(0.002, seed=7)
            await asyncio.sleep(1.5)
            before = await asyncio.to_thread(get_json, url)
            await asyncio.to_thread(procs.kill, proc)         # kill -9 mid-stream
            await asyncio.sleep(0.5)
            proc, url = await asyncio.to_thread(start, 2)
            await asyncio.sleep(1.5)
            cables[0].set_bit_flips(0)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
            for _ in range(200):
                st = await asyncio.to_thread(get_json, url)
                if st and st["queue"]["depth"] == 0:
                    break
                await asyncio.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 10) == 0
            return {"before": before, "after": st,
                    "hellos": [n.hellos for n in nodes], "err3": [n.errors3 for n in nodes]}
        finally:
            for t in tasks:
                t.cancel()
            procs.stop(proc)
            for c in cables:
                c.close()

    result = asyncio.run(asyncio.wait_for(main(), 60))
    after = result["after"]
    assert after["queue"]["depth"] == 0, after
    seqs = read_seqs(receiver.db)
    for i in range(3):
        assert seqs[f"wl-{i + 1:04d}"] == list(range(1, total + 1))
    link0 = result["before"]["links"][0]
    assert link0["crc"] + link0["cobs"] + link0["oversize"] + link0["malformed"] > 0
    assert all(n >= 1 for n in result["err3"]), result   # the restart made them say HELLO
    assert all(n["link"] == "up" and n["acked"] == total for n in after["nodes"]), after
    stats = get_json(receiver.url + "/stats")
    assert stats["duplicate_records"] == 0 and stats["failed_on_purpose"] > 0
