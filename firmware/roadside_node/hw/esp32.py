# ESP32 hardware behind the same interface as hw/sim.py. Every pin, UART id and baud rate comes
# from the node config's `hw` section, which the deploy step writes from the board file
# (boards/*.toml); nothing here is wired to one board:
#   "hw": {"uart":    {"link":   {"id": 0, "tx": 1, "rx": 3, "baudrate": 115200},
#                      "sensor": {"id": 2, "tx": 17, "rx": 16, "baudrate": 9600}},
#          "outputs": {"sensor_power": 25, "trigger": 5, "status_led": 23},
#          "inputs":  {"echo": 18, "wake": 4},
#          "adc":     {"pressure": 34, "battery": 35}}
# uart.link is required; the rest by what the role and config.sensor.type need (water:
# ultrasonic_uart -> uart.sensor, an A02YYUW-style sensor: frames 0xFF, high, low, checksum,
# distance in mm; ultrasonic_pulse -> outputs.trigger + inputs.echo, HC-SR04 style;
# pressure_adc -> adc.pressure, a 4-20 mA transducer across a shunt). Optional:
# outputs.sensor_power (high = on; switched off for deep sleep), inputs.wake (deep sleep also
# ends when it goes low, e.g. a float switch).
import sys
import time

import gc
import machine
from micropython import const

from ..config import ConfigError

_LINK_RXBUF = const(2048)  # two whole frames (MAX_ENCODED 1040) fit while the role runs
_ECHO_TIMEOUT_US = const(30000)  # ~5 m and back
_ADC_SAMPLES = const(8)
_CAUSES = {
    machine.PWRON_RESET: "power_on",
    machine.HARD_RESET: "hard",
    machine.WDT_RESET: "wdt",
    machine.DEEPSLEEP_RESET: "deepsleep",
    machine.SOFT_RESET: "soft",
}


def _table(hw, name):
    t = hw.get(name)
    return t if isinstance(t, dict) else {}


def _pin_no(table, key, where):
    v = table.get(key)
    if type(v) is not int or v < 0:
        raise ConfigError("hw.%s.%s: bad value %r; allowed: a GPIO number (from the board "
                          "file)" % (where, key, v))
    return v


def _uart(hw, function):
    u = _table(hw, "uart").get(function)
    if not isinstance(u, dict):
        raise ConfigError("hw.uart.%s: missing; the deploy step writes it from the board "
                          "file's [uart.%s]" % (function, function))
    where = "uart." + function
    return machine.UART(_pin_no(u, "id", where), baudrate=_pin_no(u, "baudrate", where),
                        tx=_pin_no(u, "tx", where), rx=_pin_no(u, "rx", where),
                        rxbuf=_LINK_RXBUF if function == "link" else 256, timeout=0)


class Esp32HW:
    board = "esp32"
    speed = 1  # role time is real time

    def __init__(self, config):
        hw = config.data.get("hw")
        if not isinstance(hw, dict):
            raise ConfigError("hw: missing; the deploy step writes it from the board file "
                              "(boards/*.toml)")
        self.hw = hw
        self.uart = _uart(hw, "link")
        self.link_id = _table(hw, "uart")["link"]["id"]
        self.wdt = machine.WDT(timeout=config.get("watchdog_ms"))
        self.rtc = machine.RTC()
        self._t0 = time.ticks_ms()
        self._clock0 = time.time()  # the RTC runs on through deep sleep: role time does too
        self._cause = _CAUSES.get(machine.reset_cause(), "unknown")
        self.sensor = None
        self.trigger = None
        self.echo = None
        self.adc = None
        self.power = None
        outputs = _table(hw, "outputs")
        if "sensor_power" in outputs:
            self.power = machine.Pin(_pin_no(outputs, "sensor_power", "outputs"),
                                     machine.Pin.OUT, value=1)
        if config.get("role") == "water":
            self._init_water(config.get("sensor.type"), outputs)
        self.signal = None  # signal monitor / toll beacon hardware (hw/esp32_roles.py)
        self.reader = None
        if config.get("role") == "signal":
            from .esp32_roles import SignalIO
            self.signal = SignalIO(hw, config.get("phases"))
        elif config.get("role") == "toll":
            from .esp32_roles import ReaderIO
            self.reader = ReaderIO(hw)

    def _init_water(self, sensor, outputs):
        hw = self.hw
        if sensor == "ultrasonic_uart":
            self.sensor = _uart(hw, "sensor")
        elif sensor == "ultrasonic_pulse":
            self.trigger = machine.Pin(_pin_no(outputs, "trigger", "outputs"), machine.Pin.OUT,
                                       value=0)
            self.echo = machine.Pin(_pin_no(_table(hw, "inputs"), "echo", "inputs"),
                                    machine.Pin.IN)
        else:  # pressure_adc: 11 dB attenuation, full scale about 3.1 V
            self.adc = machine.ADC(machine.Pin(_pin_no(_table(hw, "adc"), "pressure", "adc")),
                                   atten=machine.ADC.ATTN_11DB)

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

    # -- sensors -------------------------------------------------------------------------
    def distance_mm(self):
        """Ultrasonic distance in mm, or None (no echo, no complete frame)."""
        if self.trigger is not None and self.echo is not None:
            self.trigger.value(1)
            time.sleep_us(10)
            self.trigger.value(0)
            us = machine.time_pulse_us(self.echo, 1, _ECHO_TIMEOUT_US)
            return us * 343 // 2000 if us > 0 else None  # there and back at 343 m/s
        if self.sensor is None:
            return None
        data = self.sensor.read(64)
        if not data:
            return None
        for i in range(len(data) - 4, -1, -1):
            if data[i] == 0xFF and (data[i] + data[i + 1] + data[i + 2]) & 0xFF == data[i + 3]:
                return (data[i + 1] << 8) | data[i + 2]
        return None

    def pressure_raw(self):
        """The pressure transducer's ADC reading (read_u16), averaged, or None."""
        if self.adc is None:
            return None
        total = 0
        for _ in range(_ADC_SAMPLES):
            total += self.adc.read_u16()
        return total // _ADC_SAMPLES

    # -- signal monitor and toll beacon (hw/esp32_roles.py) -------------------------------
    def signal_samples(self):
        return self.signal.samples()  # type: ignore[union-attr]

    def loop_counts(self):
        return self.signal.loop_counts()  # type: ignore[union-attr]

    def plan_select(self, plan):
        self.signal.plan_select(plan)  # type: ignore[union-attr]

    def fault_output(self, active):
        self.signal.fault_output(active)  # type: ignore[union-attr]

    def reader_read(self):
        return self.reader.read()  # type: ignore[union-attr]

    def reader_write(self, data):
        self.reader.write(data)  # type: ignore[union-attr]

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

    def deepsleep(self, ms):
        """Sensor power off, wake on the timer (and inputs.wake going low), sleep."""
        import esp32

        if self.power is not None:
            self.power.value(0)
        inputs = _table(self.hw, "inputs")
        if "wake" in inputs:
            pin = machine.Pin(_pin_no(inputs, "wake", "inputs"), machine.Pin.IN,
                              machine.Pin.PULL_UP)
            esp32.wake_on_ext0(pin, esp32.WAKEUP_ALL_LOW)
        machine.deepsleep(ms)

    def reset(self, cause="soft"):
        machine.reset()
        sys.exit(3)  # not reached on a board
