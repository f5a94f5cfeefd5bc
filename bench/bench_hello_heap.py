"""Free heap at the first HELLO, per role, in the board's terms: firmware/main.py booted on
the fake ESP32 (tests/firmware/fakes, exactly as tests/firmware/test_esp32.py's boot test does) with
the firmware precompiled (tools/sim/launcher.py build_mpy) at ESP32_HEAP (118k: the board's
96 KiB plus this 64-bit interpreter's overhead, docs/PERFORMANCE.md "The twin's heap").

    .venv/bin/python bench/bench_hello_heap.py            # every role
    .venv/bin/python bench/bench_hello_heap.py water rain

Prints one line per role: the HELLO's free heap (key 10), bytes.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from roadside.tools.sim.launcher import build_mpy  # noqa: E402
from support.micropython import ESP32_HEAP, FIRMWARE, run_stdout  # noqa: E402

FAKES = REPO / "tests" / "firmware" / "fakes"
LINK = {"id": 1, "tx": 4, "rx": 5, "baudrate": 115200}
# the boards' hw sections (boards/*.toml, as tests/firmware/test_esp32*.py have them)
HW = {
    "water": {"uart": {"link": LINK, "sensor": {"id": 2, "tx": 17, "rx": 16, "baudrate": 9600}},
              "outputs": {"sensor_power": 25, "status_led": 23, "trigger": 26},
              "inputs": {"echo": 27, "wake": 32}, "adc": {"pressure": 34, "battery": 35}},
    "signal": {"uart": {"link": LINK},
               "inputs": {"phase1_red": 4, "phase1_amber": 5, "phase1_green": 6,
                          "phase2_red": 7, "phase2_amber": 15, "phase2_green": 16,
                          "loop_1": 12, "loop_2": 13, "plan_ack": 35},
               "outputs": {"plan_bit0": 37, "plan_bit1": 38, "plan_strobe": 39,
                           "fault_relay": 40}},
    "toll": {"uart": {"link": LINK, "reader": {"id": 2, "tx": 17, "rx": 16,
                                               "baudrate": 115200, "de": 4}}},
    "rain": {"uart": {"link": LINK}, "inputs": {"rain_tip": 33}},
}
EXTRA = {"signal": {"phases": 2}}
# what the other roles' hardware uses beyond the water fakes (tests/firmware/test_esp32_roles.py);
# not added for water, so its figure is the boot test's (test_esp32.py) exactly
PATCH = """
machine.Pin.IRQ_FALLING = 2
machine.Pin.value = lambda self, v=None: 1 if v is None else None
machine.Pin.irq = lambda self, trigger=0, handler=None: None
machine.disable_irq = lambda: 7
machine.enable_irq = lambda s: None
machine.UART.flush = lambda self: None
"""

CODE = """
import sys, json
sys.path.insert(0, %(mpy)r)
sys.path.insert(0, %(fakes)r)
import machine, esp32
from roadside_node.config import Config, ConfigError
from roadside_node.hw.esp32 import Esp32HW

def show(x):
    print(json.dumps(x))
%(patch)s
machine.RESET_CAUSE[0] = 1
machine.WDT_LIMIT[0] = 5
machine.UART_RX[2] = bytes([0xFF, 0x07, 0xD0, (0xFF + 0x07 + 0xD0) & 0xFF]) * 4
machine.UART_RX[1] = b""
machine.UART_READ_MAX[0] = None
try:
    exec(open(%(main)r).read(), {"__name__": "__main__"})
except machine.Stop:
    pass
from roadside_node import cbor, framing
d = framing.Deframer()
for c in machine.CALLS:
    if c[0] == "UART.write":
        for p in d.feed(c[2]):
            m = cbor.loads(p)
            if m[0] == 1:
                print("HELLO", m[10])
"""


def hello_free(role: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {"node_id": "wl-0007", "role": role, "board": "roadside-water-level-r1",
               "hw": HW[role],
               **EXTRA.get(role, {})}
        (Path(tmp) / "config.json").write_text(json.dumps(cfg))
        out = run_stdout(CODE % {"mpy": str(build_mpy()), "fakes": str(FAKES),
                                 "patch": "" if role == "water" else PATCH,
                                 "main": str(FIRMWARE / "main.py")},
                         cwd=tmp, heapsize=ESP32_HEAP)
    return int([ln for ln in out.splitlines() if ln.startswith("HELLO ")][0].split()[1])


def main() -> None:
    for role in sys.argv[1:] or list(HW):
        print(f"{role:7} {hello_free(role):7,}")


if __name__ == "__main__":
    main()
