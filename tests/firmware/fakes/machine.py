# A fake `machine` for the MicroPython unix port (whose machine has no Pin, UART, ADC, WDT,
# RTC): it records every call in CALLS, in order, and plays back inputs queued by the test,
# so a test can assert that hw/esp32.py opened UART(2, baudrate=9600, tx=17, rx=16), armed
# WDT(timeout=8000) or slept with deepsleep(60000). Put tests/firmware/fakes first on sys.path.
import io

CALLS = []  # (name, args...) in call order
UART_RX = {}  # uart id -> bytes waiting to be read (tests append)
UART_READ_MAX = [None]  # at most this many bytes per read (a frame arrives in pieces)
ADC_VALUES = {}  # pin -> list of read_u16 values (the last one repeats)
PULSES = []  # time_pulse_us results, in order (-1 when empty)
RTC_MEMORY = [b""]  # survives "resets" within one process
RESET_CAUSE = [1]  # what reset_cause() returns (PWRON_RESET)
WDT_LIMIT = [None]  # after this many feeds, feed() raises Stop (ends a main loop)

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
PIN_WAKE = 2  # wake_reason() after an ext0 wake (EXT0_WAKE)
WAKE_REASON = [0]  # what wake_reason() returns


class Stop(BaseException):
    """Raised to leave code that never returns on a board (deepsleep, reset, WDT limit)."""


def clear():
    del CALLS[:]
    UART_RX.clear()
    UART_READ_MAX[0] = None
    ADC_VALUES.clear()
    del PULSES[:]
    RTC_MEMORY[0] = b""
    RESET_CAUSE[0] = PWRON_RESET
    WDT_LIMIT[0] = None


def calls(name):
    return [c for c in CALLS if c[0] == name]


class Pin:
    IN = 1
    OUT = 3
    PULL_UP = 1
    PULL_DOWN = 2

    def __init__(self, id, mode=-1, pull=-1, *, value=None):
        self.id = id
        CALLS.append(("Pin", id, mode, pull, value))

    def value(self, v=None):
        if v is None:
            return 0
        CALLS.append(("Pin.value", self.id, v))
        return None

    def __repr__(self):
        return f"Pin({self.id:d})"


class UART(io.IOBase):
    def __init__(self, id, baudrate=9600, **kw):
        self.id = id
        kw["baudrate"] = baudrate
        CALLS.append(("UART", id, kw))
        UART_RX.setdefault(id, b"")

    def read(self, n=-1):
        data = UART_RX.get(self.id, b"")
        if not data:
            return None  # as machine.UART: nothing waiting (timeout 0)
        n = len(data) if n < 0 else n
        if UART_READ_MAX[0] is not None:
            n = min(n, UART_READ_MAX[0])
        UART_RX[self.id] = data[n:]
        return data[:n]

    def write(self, data):
        CALLS.append(("UART.write", self.id, bytes(data)))
        return len(data)

    def readinto(self, buf):
        data = self.read(len(buf))
        if not data:
            return None
        buf[:len(data)] = data
        return len(data)

    def ioctl(self, req, arg):
        # select.poll asks with MP_STREAM_POLL (3): readable while bytes are waiting
        if req == 3:
            return arg & 1 if UART_RX.get(self.id) else 0  # POLLIN
        return 0


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3

    def __init__(self, pin, *, atten=None):
        self.pin = pin.id if isinstance(pin, Pin) else pin
        CALLS.append(("ADC", self.pin, atten))

    def read_u16(self):
        vals = ADC_VALUES.get(self.pin) or [0]
        return vals.pop(0) if len(vals) > 1 else vals[0]


class WDT:
    def __init__(self, *, id=0, timeout=5000):
        CALLS.append(("WDT", timeout))
        self.feeds = 0

    def feed(self):
        self.feeds += 1
        CALLS.append(("WDT.feed",))
        if WDT_LIMIT[0] is not None and self.feeds >= WDT_LIMIT[0]:
            raise Stop("wdt feeds")


class RTC:
    def memory(self, data=None):
        if data is None:
            return RTC_MEMORY[0]
        CALLS.append(("RTC.memory", bytes(data)))
        RTC_MEMORY[0] = bytes(data)
        return None


def time_pulse_us(pin, level, timeout_us=1000000):
    CALLS.append(("time_pulse_us", pin.id, level, timeout_us))
    return PULSES.pop(0) if PULSES else -1


def reset_cause():
    return RESET_CAUSE[0]


def wake_reason():
    return WAKE_REASON[0]


def unique_id():
    return b"\x24\x0a\xc4\x00\x11\x22"


def deepsleep(ms=0):
    CALLS.append(("deepsleep", ms))
    RESET_CAUSE[0] = DEEPSLEEP_RESET
    raise Stop("deepsleep")


def reset():
    CALLS.append(("reset",))
    RESET_CAUSE[0] = SOFT_RESET
    raise Stop("reset")
