# ESP32 hardware behind the same interface as hw/sim.py. Every pin, UART id and baud rate comes
# from the node config's `hw` section, which the deploy step writes from the board file
# (boards/*.toml); nothing here is wired to one board:
#   "hw": {"uart":    {"link":   {"id": 0, "tx": 1, "rx": 3, "baudrate": 115200},
#                      "sensor": {"id": 2, "tx": 17, "rx": 16, "baudrate": 9600}},
#          "outputs": {"sensor_power": 25, "trigger": 5, "status_led": 23},
#          "inputs":  {"echo": 18, "wake": 4},
#          "adc":     {"pressure": 34, "battery": 35}}
# uart.link is required; the rest by what the role needs: each role's hardware is its own
# module, hw/esp32_<role>.py (role_io() loads it; hw/contract.pyi says what each provides).
# Optional here: outputs.sensor_power (high = on; switched off for deep sleep), inputs.wake
# (deep sleep also ends when it goes low, e.g. a float switch; a role's io may add its own
# wake source with wake_pin()).
import sys
import time

import gc
import machine
from micropython import const

from ..config import ConfigError
from .pins import pin_no, table, uart

_LINK_RXBUF = const(2048)  # two whole frames (MAX_ENCODED 1040) fit while the role runs
_CAUSES = {
    machine.PWRON_RESET: "power_on",
    machine.HARD_RESET: "hard",
    machine.WDT_RESET: "wdt",
    machine.DEEPSLEEP_RESET: "deepsleep",
    machine.SOFT_RESET: "soft",
}


class Esp32HW:
    board = "esp32"
    speed = 1  # role time is real time

    def __init__(self, config):
        hw = config.data.get("hw")
        if not isinstance(hw, dict):
            raise ConfigError("hw: missing; the deploy step writes it from the board file "
                              "(boards/*.toml)")
        self.hw = hw
        self.uart = uart(hw, "link", _LINK_RXBUF)
        self.link_id = table(hw, "uart")["link"]["id"]
        self.wdt = machine.WDT(timeout=config.get("watchdog_ms"))
        self.rtc = machine.RTC()
        self._t0 = time.ticks_ms()
        self._clock0 = time.time()  # the RTC runs on through deep sleep: role time does too
        self._cause = _CAUSES.get(machine.reset_cause(), "unknown")
        self.power = None
        self.wake = None  # (pin, level): a role's own deep sleep wake source (wake_pin)
        outputs = table(hw, "outputs")
        if "sensor_power" in outputs:
            self.power = machine.Pin(pin_no(outputs, "sensor_power", "outputs"),
                                     machine.Pin.OUT, value=1)

    def role_io(self, config):
        """The role's hardware: IO(self, config) of hw/esp32_<role>.py."""
        mod = __import__("roadside_node.hw.esp32_" + config.get("role"), None, None, ("IO",))
        return mod.IO(self, config)

    # -- clocks --------------------------------------------------------------------------
    def ticks_ms(self):
        return time.ticks_ms()

    def ticks_diff(self, a, b):
        return time.ticks_diff(a, b)

    def uptime_s(self):
        return time.ticks_diff(time.ticks_ms(), self._t0) // 1000

    def sim_s(self):
        """Role time: real seconds on the RTC's clock (continues across deep sleep)."""
        return self._clock0 + time.ticks_diff(time.ticks_ms(), self._t0) / 1000

    def sleep_ms(self, ms):
        time.sleep_ms(ms)

    # -- link ----------------------------------------------------------------------------
    def uart_read(self):
        return self.uart.read(256) or b""

    def uart_write(self, data):
        self.uart.write(data)

    def poll_obj(self):
        return self.uart

    def log(self, text):
        """print, unless the link is UART 0, which also carries the REPL's output."""
        if self.link_id != 0:
            print(text)

    # -- system --------------------------------------------------------------------------
    def free_heap(self):
        gc.collect()  # report what is really free, not what garbage happens to be left
        return gc.mem_free()

    def reset_cause(self):
        return self._cause

    def unique_id(self):
        return machine.unique_id()

    def bluetooth(self):
        """The port's `bluetooth` module (NimBLE) for ble.py."""
        import bluetooth
        return bluetooth

    def ble_poll_obj(self):
        return None  # BLE events arrive as IRQs: the loop's poll timeout bounds the latency

    def random_bytes(self, n):
        import os
        return os.urandom(n)  # the ESP32's hardware RNG (RF on: true random)

    def feed_watchdog(self):
        self.wdt.feed()

    feed_wdt = feed_watchdog

    def rtc_load(self):
        return self.rtc.memory()

    def rtc_save(self, data):
        self.rtc.memory(data)

    def wake_pin(self, pin, level=0):
        """Deep sleep also ends when this Pin reaches level (ext0; one source: the last)."""
        self.wake = (pin, level)

    def woke_by_pin(self):
        """This boot is a deep sleep wake by the ext0 pin (inputs.wake or wake_pin())."""
        return machine.wake_reason() == machine.PIN_WAKE

    def deepsleep(self, ms):
        """Sensor power off, wake on the timer (and inputs.wake going low, or the role's
        wake_pin), sleep."""
        import esp32

        if self.power is not None:
            self.power.value(0)
        inputs = table(self.hw, "inputs")
        if self.wake is not None:
            pin, level = self.wake
            esp32.wake_on_ext0(pin, esp32.WAKEUP_ANY_HIGH if level else esp32.WAKEUP_ALL_LOW)
        elif "wake" in inputs:
            pin = machine.Pin(pin_no(inputs, "wake", "inputs"), machine.Pin.IN,
                              machine.Pin.PULL_UP)
            esp32.wake_on_ext0(pin, esp32.WAKEUP_ALL_LOW)
        machine.deepsleep(ms)

    def reset(self, cause="soft"):
        machine.reset()
        sys.exit(3)  # not reached on a board
