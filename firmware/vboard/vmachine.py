# `machine` for the virtual board (vboard/boot.py installs it): what the deployed firmware's
# ESP32 layer (roadside_node/hw/esp32.py) needs from a board the unix port does not have.
# See tools/sim/virtual_board.py's docstring for what each piece models.
import json
import sys
import time

import termios  # type: ignore[import-not-found]  # unix port only

from .flash import host_path

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
_CAUSES = {"power_on": 1, "hard": 2, "wdt": 3, "deepsleep": 4, "soft": 5}
_VMIN = 6  # c_cc indices on Linux (the unix port's termios has no names for them)
_VTIME = 5
_S = {"cause": 1, "run": "."}  # reset cause, the board's host dir (after the mount)
_cfg = {}  # type: dict  # board.json: mac, link pty, distance_mm, adc_u16, boot_delay_ms


def _init(cause, run):
    """Before the mount: read board.json from the host dir `run`."""
    _S["cause"] = _CAUSES.get(cause, 1)
    _S["run"] = host_path(run)  # where the host dir is once the image is /
    with open(run + "/board.json") as f:
        _cfg.update(json.load(f))


def reset_cause():
    return _S["cause"]


def unique_id():
    return bytes(int(x, 16) for x in _cfg["mac"].split(":"))


def reset():
    sys.exit(3)


def soft_reset():
    sys.exit(0)


def deepsleep(ms=0):
    time.sleep_ms(min(ms, 1000))
    sys.exit(4)


lightsleep = deepsleep


def freq(*a):
    return 240000000


def idle():
    time.sleep_ms(1)


def disable_irq():
    return 0


def enable_irq(state=0):
    pass


def time_pulse_us(pin, level, timeout_us=1000000):
    return -1


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, id, mode=-1, pull=-1, *, value=None):
        self.id = id
        self._v = 1 if pull == 1 else (value or 0)

    def value(self, v=None):
        if v is None:
            return self._v
        self._v = v

    def on(self):
        self._v = 1

    def off(self):
        self._v = 0

    def irq(self, *a, **k):
        return None

    def __call__(self, v=None):
        return self.value(v)


class ADC:
    ATTN_0DB = 0
    ATTN_11DB = 3

    def __init__(self, pin, atten=None):
        self.pin = pin

    def read_u16(self):
        return _cfg.get("adc_u16", 32768)

    def read(self):
        return self.read_u16() >> 4

    def atten(self, a):
        pass


class WDT:
    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout

    def feed(self):
        pass


class RTC:
    """RTC memory in the board's host dir (rtc.bin): not flash, it survives a reset."""

    def memory(self, data=None):
        path = "%s/rtc.bin" % _S["run"]
        if data is None:
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError:
                return b""
        with open(path, "wb") as f:
            f.write(data)

    def datetime(self, *a):
        return (2000, 1, 1, 0, 0, 0, 0, 0)


class _Sensor:
    """An A02YYUW-style ultrasonic sensor on any UART but the link: a fixed distance."""

    def __init__(self, mm):
        mm = int(mm)
        hi, lo = (mm >> 8) & 0xFF, mm & 0xFF
        self.frame = bytes((0xFF, hi, lo, (0xFF + hi + lo) & 0xFF))

    def read(self, n=-1):
        return self.frame

    def write(self, data):
        return len(data)

    def any(self):
        return 4


def _link_id():
    try:
        with open("/config.json") as f:
            return json.load(f)["hw"]["uart"]["link"]["id"]
    except Exception:
        return 0


def UART(id, baudrate=115200, **kw):
    """The link UART (the config's hw.uart.link.id): the node end of a pty; any other: a sensor."""
    if id != _link_id():
        return _Sensor(_cfg.get("distance_mm", 2500))
    f = open(host_path(_cfg["link"]), "r+b")
    fd = f.fileno()
    termios.setraw(fd)
    attr = termios.tcgetattr(fd)
    attr[6][_VMIN] = 0  # reads return at once with what is there (or nothing)
    attr[6][_VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attr)
    return f
