"""hw/esp32.py + hw/esp32_signal.py and hw/esp32_toll.py for the signal monitor and the toll beacon
under MicroPython with the fake `machine` (tests/firmware/fakes), extended here with what these
roles use (pin levels, Pin.irq, disable_irq/enable_irq, UART.flush): the exact pins, pulls, IRQ
triggers, plan bits and strobe, the fail-safe fault relay, the reader UART and RS-485 driver
enable."""

from __future__ import annotations

import json
from pathlib import Path

from support.micropython import run_stdout

FAKES = Path(__file__).resolve().parent / "fakes"

# from boards/roadside-signal-monitor-r1.toml and boards/roadside-toll-beacon-r1.toml
SIGNAL_HW = {
    "uart": {"link": {"id": 0, "tx": 43, "rx": 44, "baudrate": 115200}},
    "inputs": {"phase1_red": 4, "phase1_amber": 5, "phase1_green": 6, "phase2_red": 7,
               "phase2_amber": 15, "phase2_green": 16, "loop_1": 12, "loop_2": 13,
               "plan_ack": 35},
    "outputs": {"plan_bit0": 37, "plan_bit1": 38, "plan_strobe": 39, "fault_relay": 40},
}
RAIN_HW = {  # from boards/roadside-rain-gauge-r1.toml
    "uart": {"link": {"id": 0, "tx": 1, "rx": 3, "baudrate": 115200}},
    "inputs": {"rain_tip": 33},
}
TOLL_HW = {
    "uart": {"link": {"id": 0, "tx": 1, "rx": 3, "baudrate": 115200},
             "reader": {"id": 2, "tx": 17, "rx": 16, "baudrate": 115200, "de": 4}},
}

PRELUDE = f"""
import sys, json
sys.path.insert(0, {str(FAKES)!r})
import machine, time
LEVELS = {{}}   # pin -> level; unset pins read 1 (pulled up, inactive)
HANDLERS = {{}}
machine.Pin.IRQ_FALLING = 2
machine.Pin.value = lambda self, v=None: LEVELS.get(self.id, 1) if v is None else \\
    machine.CALLS.append(("Pin.value", self.id, v))
machine.Pin.irq = lambda self, trigger=0, handler=None: (
    machine.CALLS.append(("Pin.irq", self.id, trigger)), HANDLERS.__setitem__(self.id, handler))
machine.disable_irq = lambda: machine.CALLS.append(("disable_irq",)) or 7
machine.enable_irq = lambda s: machine.CALLS.append(("enable_irq", s))
machine.UART.flush = lambda self: machine.CALLS.append(("UART.flush", self.id))
from roadside_node.config import Config
from roadside_node.hw.esp32 import Esp32HW

def show(x):
    print(json.dumps(x))
"""


def run(code: str, tmp_path: Path) -> list:
    out = []
    for line in run_stdout(PRELUDE + code, cwd=tmp_path, heapsize="256k").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def test_signal_monitor_pins_scan_counts_plan_and_relay(tmp_path):
    cfg = {"node_id": "sg-0001", "role": "signal", "phases": 2, "hw": SIGNAL_HW}
    out = run(f"""
c = Config({json.dumps(cfg)})
hw = Esp32HW(c).role_io(c)   # the role's hardware: hw/esp32_<role>.py
show([list(c) for c in machine.CALLS if c[0] in ("Pin", "Pin.irq")])
LEVELS[6] = 0   # phase 1 green lit
LEVELS[7] = 0   # phase 2 red lit
t, heads = hw.signal_samples()[0]
show(list(heads))
HANDLERS[12](None); HANDLERS[12](None); HANDLERS[13](None)
show(hw.loop_counts()); show(hw.loop_counts())
del machine.CALLS[:]
hw.plan_select(3)
hw.fault_output(True)
hw.fault_output(False)
show([list(c) for c in machine.CALLS])
try:
    hw.plan_select(5)
except ValueError as e:
    show(str(e))
""", tmp_path)
    pins, heads, counts, counts2, calls, refused = out
    lamps = [[n, 1, 1, None] for n in (4, 5, 6, 7, 15, 16)]       # IN with PULL_UP
    assert [p[1:] for p in pins if p[0] == "Pin" and p[1] in (4, 5, 6, 7, 15, 16)] == lamps
    assert ["Pin.irq", 12, 2] in pins and ["Pin.irq", 13, 2] in pins   # falling edge
    assert ["Pin", 40, 3, -1, 1] in pins                      # fault relay energised = OK
    assert heads == [4, 1]
    assert counts == [2, 1] and counts2 == [0, 0]
    assert calls == [["Pin.value", 37, 0], ["Pin.value", 38, 1],      # plan 3 -> 0b10
                     ["Pin.value", 39, 1], ["Pin.value", 39, 0],      # strobe
                     ["Pin.value", 40, 0], ["Pin.value", 40, 1]]      # fault, cleared
    assert "2 plan bits: plans 1 to 4" in refused


def test_toll_reader_uart_and_rs485_driver_enable(tmp_path):
    cfg = {"node_id": "tb-0001", "role": "toll", "hw": TOLL_HW}
    out = run(f"""
c = Config({json.dumps(cfg)})
hw = Esp32HW(c).role_io(c)   # the role's hardware: hw/esp32_<role>.py
show([[c[0], c[1], c[2]] for c in machine.CALLS if c[0] == "UART"])
machine.UART_RX[2] = b"$H,500,OK*7E\\r\\n"
show(hw.reader_read().decode())
del machine.CALLS[:]
hw.reader_write(b"$A,E2,5*00\\r\\n")
show([list(c[:2]) for c in machine.CALLS])
""", tmp_path)
    uarts, got, calls = out
    assert ["UART", 2, {"baudrate": 115200, "tx": 17, "rx": 16, "rxbuf": 2048,
                        "timeout": 0}] in uarts
    assert got == "$H,500,OK*7E\r\n"
    assert calls == [["Pin.value", 4], ["UART.write", 2], ["UART.flush", 2],
                     ["Pin.value", 4]]


def test_rain_gauge_counts_debounced_tips_and_the_wake_tip_and_arms_the_pin(tmp_path):
    cfg = {"node_id": "rg-0001", "role": "rain", "debounce_ms": 100, "hw": RAIN_HW}
    out = run(f"""
machine.WAKE_REASON[0] = machine.PIN_WAKE     # this boot: the bucket's tip ended deep sleep
c = Config({json.dumps(cfg)})
base = Esp32HW(c)
io = base.role_io(c)
show([list(c) for c in machine.CALLS if c[0] in ("Pin", "Pin.irq")])
show(io.tips())                               # the tip that woke the board
HANDLERS[33](None)                            # the wake tip's contact bounce: ignored
time.sleep_ms(150)
HANDLERS[33](None); HANDLERS[33](None)        # one tip, and its bounce
time.sleep_ms(150)
HANDLERS[33](None)
show([io.tips(), io.tips()])
del machine.CALLS[:]
try:
    base.deepsleep(60000)
except machine.Stop:
    pass
show([list(c) for c in machine.CALLS])
""", tmp_path)
    pins, woke, counts, calls = out
    assert pins == [["Pin", 33, 1, 1, None], ["Pin.irq", 33, 2]]   # pulled up, falling edge
    assert woke == 1
    assert counts == [2, 0]
    assert calls == [["wake_on_ext0", 33, False], ["deepsleep", 60000]]   # wakes on low

