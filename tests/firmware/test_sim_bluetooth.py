"""The BLE twin's heap behaves like the board's (firmware/roadside_node/hw/sim_bluetooth.py).

On an ESP32 the radio's bytes wait in NimBLE's own memory; what the MicroPython heap sees of a
write is the attribute's buffer (sized by gatts_set_buffer) and the bytes object gatts_read
returns. The twin's stand-in reads the bridge's events from a pty: if it buffered what is
pending in the heap (as it once did, growing and copying a buffer per pump), a node that read
slowly would run out of memory where a board would not. Measured here under the real
MicroPython: the heap a pump allocates for 12 writes grows with their size only by what the
irq handler's gatts_read returns (as on a board).
"""

from __future__ import annotations

import os
import pty
import struct
import threading
import time
import tty
from pathlib import Path

from support.micropython import run_stdout

EVENTS = 12

PUMP = r"""
import gc
import os
from roadside_node.hw import sim_bluetooth as sb
sb.configure(PTY)
ble = sb.BLE()
ble.active(True)  # opens the pty (raw: pending input is flushed)
((rx,),) = ble.gatts_register_services(
    ((sb.UUID("7d2a0001-3c4e-4b8a-9f1d-52e0a1b2c3d4"),
      ((sb.UUID("7d2a0002-3c4e-4b8a-9f1d-52e0a1b2c3d4"), sb.FLAG_WRITE),)),))
ble.gatts_set_buffer(rx, 512, True)
seen = [0, 0]
def irq(event, data):
    seen[0] += 1
    seen[1] += len(ble.gatts_read(rx))  # ble.py's read: a bytes object of the write
ble.irq(irq)
with open("ready", "w") as f:
    f.write("1")
import select
p = select.poll()
p.register(ble.poll_obj(), select.POLLIN)
assert p.poll(10000), "no events from the host"
gc.collect()
gc.disable()
before = gc.mem_alloc()
while seen[0] < EVENTS:
    ble.pump()
used = gc.mem_alloc() - before
gc.enable()
print(seen[0], seen[1], used)
"""


def pump_heap(tmp_path: Path, size: int) -> tuple[int, int, int]:
    """(events delivered, bytes gatts_read returned, heap the pumps allocated) for EVENTS
    writes of `size` bytes, all waiting in the pty before the first pump."""
    master, slave = pty.openpty()
    tty.setraw(master)
    cwd = tmp_path / f"w{size}"
    cwd.mkdir()
    out: list[str] = []
    script = f"PTY = {os.ttyname(slave)!r}\nEVENTS = {EVENTS}\n" + PUMP
    t = threading.Thread(target=lambda: out.append(run_stdout(script, cwd=cwd, timeout=30)))
    t.start()
    try:
        deadline = time.monotonic() + 20
        while not (cwd / "ready").exists():  # the twin has opened (and flushed) its pty
            assert t.is_alive() and time.monotonic() < deadline, out
            time.sleep(0.01)
        body = struct.pack("<HH", 0, 3) + bytes(size)  # conn 0, the RX handle (register's)
        event = struct.pack("<H", len(body) + 1) + b"W" + body
        os.write(master, event * EVENTS)  # one write: all of it waits before the pump
        t.join(30)
    finally:
        os.close(master)
        os.close(slave)
    assert out, "the MicroPython side did not finish"
    n, held, used = (int(x) for x in out[0].split())
    return n, held, used


def test_the_twin_pump_allocates_for_a_write_what_a_board_does(tmp_path: Path) -> None:
    n_small, read_small, small = pump_heap(tmp_path, 20)
    n_large, read_large, large = pump_heap(tmp_path, 240)
    assert n_small == n_large == EVENTS
    assert (read_small, read_large) == (EVENTS * 20, EVENTS * 240)
    # 12 x 220 more bytes delivered: the gatts_read copies grow by that (the board's too),
    # and nothing else; the old pump copied each write about 4 times (a growing buffer,
    # the event's body, the attribute's concatenation)
    extra = EVENTS * 220
    assert large - small < extra + extra // 2, (small, large, extra)
