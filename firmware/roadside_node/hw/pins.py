# Readers of the node config's `hw` section (written by the deploy step from the board file,
# boards/*.toml), shared by the base layer (hw/esp32.py) and the role hardware modules
# (hw/esp32_<role>.py): a section as a dict, a GPIO number, a UART by function.
import machine

from ..config import ConfigError


def table(hw, name):
    t = hw.get(name)
    return t if isinstance(t, dict) else {}


def pin_no(t, key, where):
    v = t.get(key)
    if type(v) is not int or v < 0:
        raise ConfigError("hw.%s.%s: bad value %r; allowed: a GPIO number (from the board "
                          "file)" % (where, key, v))
    return v


def uart_conf(hw, function):
    u = table(hw, "uart").get(function)
    if not isinstance(u, dict):
        raise ConfigError("hw.uart.%s: missing; the deploy step writes it from the board "
                          "file's [uart.%s]" % (function, function))
    return u


def uart(hw, function, rxbuf=256):
    u = uart_conf(hw, function)
    where = "uart." + function
    return machine.UART(pin_no(u, "id", where), baudrate=pin_no(u, "baudrate", where),
                        tx=pin_no(u, "tx", where), rx=pin_no(u, "rx", where), rxbuf=rxbuf,
                        timeout=0)
