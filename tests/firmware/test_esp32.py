"""hw/esp32.py (and the water role's hw/esp32_water.py) under MicroPython with a fake `machine`
(tests/firmware/fakes): the exact machine calls for a node config's `hw` section (UART ids,
pins, baud rates, WDT timeout, ADC, deep sleep wake sources), the sensor parsers, and main.py's
boot path for a few loops."""

from __future__ import annotations

import json
from pathlib import Path

import cbor2
import pytest
from roadside.gateway.protocol import encode_frame
from roadside.tools.sim.launcher import build_mpy
from support.micropython import ESP32_HEAP, FIRMWARE, run_stdout

FAKES = Path(__file__).resolve().parent / "fakes"

# what the deploy step writes from boards/roadside-water-level-r1.toml (+ a wake input)
HW = {
    "uart": {"link": {"id": 1, "tx": 4, "rx": 5, "baudrate": 115200},
             "sensor": {"id": 2, "tx": 17, "rx": 16, "baudrate": 9600}},
    "outputs": {"sensor_power": 25, "status_led": 23, "trigger": 26},
    "inputs": {"echo": 27, "wake": 32},
    "adc": {"pressure": 34, "battery": 35},
}

# the firmware precompiled (as on a board), the fakes ahead of the unix port's own machine
PRELUDE = f"""
import sys, json
sys.path.insert(0, {str(build_mpy())!r})
sys.path.insert(0, {str(FAKES)!r})
import machine, esp32
from roadside_node.config import Config, ConfigError
from roadside_node.hw.esp32 import Esp32HW

def show(x):
    print(json.dumps(x))
"""


def run(code: str, tmp_path: Path, heapsize: str = ESP32_HEAP) -> list:
    out = []
    for line in run_stdout(PRELUDE + code, cwd=tmp_path, heapsize=heapsize).splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a log line
    return out


def config(**extra) -> dict:
    c = {"node_id": "wl-0007", "role": "water", "board": "roadside-water-level-r1",
         "hw": HW}
    c.update(extra)
    return c


def test_ultrasonic_uart_node_opens_exactly_the_configured_uarts_and_watchdog(tmp_path):
    out = run(f"""
cfg = Config({json.dumps(config(watchdog_ms=9000))})
hw = Esp32HW(cfg)
io = hw.role_io(cfg)  # the water role's hardware (hw/esp32_water.py)
machine.UART_RX[2] = bytes([0x01, 0xFF, 0x07, 0xD0, (0xFF + 0x07 + 0xD0) & 0xFF, 0xFF, 0x07])
show([list(c) for c in machine.CALLS])
show([io.distance_mm(), io.distance_mm(), io.pressure_raw(), hw.reset_cause(), hw.link_id])
""", tmp_path)
    calls, (d1, d2, p, cause, link) = out
    assert calls == [
        ["UART", 1, {"baudrate": 115200, "tx": 4, "rx": 5, "rxbuf": 2048, "timeout": 0}],
        ["WDT", 9000],
        ["Pin", 25, 3, -1, 1],                         # sensor power on (OUT, high)
        ["UART", 2, {"baudrate": 9600, "tx": 17, "rx": 16, "rxbuf": 256, "timeout": 0}],
    ]
    assert d1 == 2000 and d2 is None and p is None     # the newest complete frame, once
    assert cause == "power_on" and link == 1


def test_pulse_sensor_triggers_and_times_the_echo(tmp_path):
    cfg = config(sensor={"type": "ultrasonic_pulse"})
    out = run(f"""
cfg = Config({json.dumps(cfg)})
hw = Esp32HW(cfg)
io = hw.role_io(cfg)  # the water role's hardware (hw/esp32_water.py)
machine.PULSES.extend([11662, -2])
del machine.CALLS[:]
show([io.distance_mm(), io.distance_mm()])
show([list(c) for c in machine.CALLS])
""", tmp_path)
    (d1, d2), calls = out
    assert d1 == 2000 and d2 is None                   # 11662 us at 343 m/s; a timeout: None
    assert calls[:3] == [["Pin.value", 26, 1], ["Pin.value", 26, 0],
                         ["time_pulse_us", 27, 1, 30000]]


def test_pressure_adc_uses_adc1_pin_at_11db_and_averages(tmp_path):
    cfg = config(sensor={"type": "pressure_adc"})
    out = run(f"""
cfg = Config({json.dumps(cfg)})
hw = Esp32HW(cfg)
io = hw.role_io(cfg)  # the water role's hardware (hw/esp32_water.py)
show([list(c) for c in machine.CALLS if c[0] in ("ADC", "UART")])
machine.ADC_VALUES[34] = [30000, 30008] + [30004] * 6
show(io.pressure_raw())
""", tmp_path)
    calls, raw = out
    assert ["ADC", 34, 3] in calls                     # ATTN_11DB
    assert [c for c in calls if c[0] == "UART"] == [
        ["UART", 1, {"baudrate": 115200, "tx": 4, "rx": 5, "rxbuf": 2048, "timeout": 0}]]
    assert raw == 30004


def test_deepsleep_switches_sensor_off_and_arms_timer_and_wake_pin(tmp_path):
    out = run(f"""
cfg = Config({json.dumps(config())})
hw = Esp32HW(cfg)
io = hw.role_io(cfg)  # the water role's hardware (hw/esp32_water.py)
hw.rtc_save(b'{{"v": 1}}')
del machine.CALLS[:]
try:
    hw.deepsleep(60000)
except machine.Stop:
    pass
show([list(c) for c in machine.CALLS])
hw2 = Esp32HW(Config({json.dumps(config())}))
show([hw2.reset_cause(), hw2.rtc_load().decode()])
""", tmp_path)
    calls, (cause, rtc) = out
    assert calls == [["Pin.value", 25, 0], ["Pin", 32, 1, 1, None],
                     ["wake_on_ext0", 32, False], ["deepsleep", 60000]]
    assert cause == "deepsleep" and rtc == '{"v": 1}'


@pytest.mark.parametrize("hw, message", [
    (None, "hw: missing; the deploy step writes it from the board file"),
    ({"uart": {}}, "hw.uart.link: missing"),
    ({"uart": {"link": {"id": 0, "tx": 1, "rx": 3, "baudrate": 115200}}},
     "hw.uart.sensor: missing"),
    ({"uart": {"link": {"id": 0, "tx": "1", "rx": 3, "baudrate": 115200}}},
     "hw.uart.link.tx: bad value '1'; allowed: a GPIO number"),
])
def test_missing_or_bad_hw_section_is_named(tmp_path, hw, message):
    cfg = config(hw=hw) if hw is not None else {"role": "water"}
    out = run(f"""
try:
    c = Config({json.dumps(cfg)})
    Esp32HW(c).role_io(c)
    show("no error")
except ConfigError as e:
    show(str(e))
""", tmp_path)
    assert out[0].startswith(message)


MAIN = """
machine.RESET_CAUSE[0] = {cause}
machine.WDT_LIMIT[0] = {loops}
machine.UART_RX[2] = bytes([0xFF, 0x07, 0xD0, (0xFF + 0x07 + 0xD0) & 0xFF]) * 4
machine.UART_RX[1] = {rx!r}
machine.UART_READ_MAX[0] = {read_max!r}
try:
    exec(open({main!r}).read(), {{"__name__": "__main__"}})
except machine.Stop as e:
    show(str(e))
from roadside_node import cbor, framing
d = framing.Deframer()
sent = []
for c in machine.CALLS:
    if c[0] == "UART.write":
        sent += [cbor.loads(p) for p in d.feed(c[2])]
show([{{str(k): v for k, v in m.items()}} for m in sent])
show([list(c) for c in machine.CALLS if c[0] in ("WDT", "deepsleep", "RTC.memory")])
show(json.load(open("state.json")))
"""


def boot(tmp_path, cfg, cause=1, loops=5, rx=b"", read_max=None):
    """main.py on the fake board; `rx`: what the gateway sent on the link UART, read by the
    node at most `read_max` bytes at a time."""
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    code = MAIN.format(cause=cause, loops=loops, rx=rx, read_max=read_max,
                       main=str(FIRMWARE / "main.py"))
    return run(code, tmp_path, BIG)


# an ESP32 without PSRAM (the firmware precompiled; bench/bench_firmware_memory.py has the
# per-role figures)
BIG = ESP32_HEAP


def test_main_py_boots_says_hello_feeds_the_watchdog_and_journals(tmp_path):
    stop, sent, calls, state = boot(tmp_path, config())
    assert stop == "wdt feeds"
    hello = sent[0]
    assert hello["0"] == 1 and hello["1"] == "wl-0007" and hello["6"] == "power_on"
    # free heap, in the board's terms (ESP32_HEAP: the board's 96k plus this 64-bit
    # interpreter's overhead): 35,488 B with each role's config keys loaded for its own role
    # only, as one flat tuple, config_edit.py and commands.py not yet, and nothing of the
    # over-the-air updates without an ota dir (docs/PERFORMANCE.md "Free heap at HELLO"). The
    # floor is 34,000: ~1.5 KB of margin for what the run's paths (on sys.path) cost, above the
    # 32,800 B of the keys as dicts of tuples; not in safe mode
    assert hello["10"] > 34000 and "11" not in hello
    assert calls == [["WDT", 8000]]
    assert state["boot_count"] == 1
    assert (tmp_path / "journal.bin").stat().st_size > 20   # level and health journaled
    assert json.loads((tmp_path / "bootguard.json").read_text()) == {"unhealthy": 1}


def test_main_py_reads_the_link_uart_and_answers(tmp_path):
    """The receive path: frames from the gateway on the link UART (in 7-byte pieces, with a
    corrupt frame among them) reach the session, and its answers go out on the same UART."""
    now_ms = 1795420800123
    rx = (b"\x13\x37garbage\x00"                                  # corrupt: dropped
          + encode_frame(cbor2.dumps({0: 6, 1: now_ms}))             # TIME
          + encode_frame(cbor2.dumps({0: 3, 1: 0}))                  # ACK, nothing yet
          + encode_frame(cbor2.dumps({0: 4, 1: 77, 2: "ping"}))      # COMMAND
          + encode_frame(cbor2.dumps({0: 4, 1: 78, 2: "config.get", 3: {}})))
    stop, sent, _, _ = boot(tmp_path, config(), rx=rx, read_max=7)
    assert stop == "wdt feeds"
    assert sent[0]["0"] == 1                                         # HELLO first
    replies = {m["1"]: m for m in sent if m["0"] == 5}
    assert replies[77] == {"0": 5, "1": 77, "2": True, "3": "pong"}, sent
    assert replies[78]["2"] is True and replies[78]["3"]["node_id"] == "wl-0007"
    # records made after TIME carry epoch seconds, not seconds since boot
    records = [r for m in sent if m["0"] == 2 for r in m["2"]]
    assert records and all(not r[3] & 1 and r[1] >= now_ms // 1000 for r in records), records


def test_main_py_battery_mode_samples_sleeps_and_wakes_with_its_state(tmp_path):
    cfg = config(battery=True, awake_max_ms=500, sample_interval_s=30, datum_mm=2500)
    stop, sent, calls, state = boot(tmp_path, cfg, loops=None)
    assert stop == "deepsleep"
    assert [m["0"] for m in sent] == [1]               # HELLO; nobody answers: sleep anyway
    sleeps = [c for c in calls if c[0] == "deepsleep"]
    assert len(sleeps) == 1 and 28000 <= sleeps[0][1] <= 30000
    rtc = json.loads([c for c in calls if c[0] == "RTC.memory"][-1][1])
    assert rtc["v"] == 1 and rtc["r"]["s"] == [2000] and rtc["r"]["st"] == 0
    assert json.loads((tmp_path / "bootguard.json").read_text()) == {"unhealthy": 0}
    assert state["next_seq"] == 3                      # level + health, unacked
    # the next wake: reset cause deepsleep, RTC memory lost with the process, so give it back
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    code = MAIN.format(cause=4, loops=None, rx=b"", read_max=None,
                       main=str(FIRMWARE / "main.py"))
    code = f"machine.RTC_MEMORY[0] = {json.dumps(rtc).encode()!r}\n" + code
    stop, sent, calls, state = run(code, tmp_path, BIG)
    assert stop == "deepsleep" and sent[0]["6"] == "deepsleep"
    assert sent[0]["9"] == 1 and sent[0]["7"] == 3     # the old records wait, seq goes on
    rtc2 = json.loads([c for c in calls if c[0] == "RTC.memory"][-1][1])
    assert rtc2["r"]["s"] == [2000, 2000]              # the filter window came through sleep
