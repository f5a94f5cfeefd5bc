# ESP32 hardware of the toll beacon (roles/toll.py): the RFID reader's UART, from the node
# config's `hw` section (written by the deploy step from the board file, e.g.
# boards/roadside-toll-beacon-r1.toml):
#   "uart": {"reader": {"id": 2, "tx": 17, "rx": 16, "baudrate": 115200, "de": 4}}
import machine

from .pins import pin_no, uart, uart_conf


class IO:
    """The reader's UART (RS-485 with a driver-enable pin when `de` is given), for
    roles/toll.py; hw is the base layer (hw/esp32.py)."""

    def __init__(self, hw, config):
        self.uart = uart(hw.hw, "reader", 2048)
        u = uart_conf(hw.hw, "reader")
        self.de = None
        if "de" in u:
            self.de = machine.Pin(pin_no(u, "de", "uart.reader"), machine.Pin.OUT, value=0)

    def reader_read(self):
        return self.uart.read(256) or b""

    def reader_write(self, data):
        de = self.de
        if de is not None:
            de.value(1)
        self.uart.write(data)
        if de is not None:
            self.uart.flush()  # wait until the last bit is out before releasing the bus
            de.value(0)
