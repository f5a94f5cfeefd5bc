# ESP32 hardware of the water level node (roles/water.py): the level sensor by config
# sensor.type, on what the node config's `hw` section names (deploy writes it from the board
# file, e.g. boards/roadside-water-level-r1.toml):
#   ultrasonic_uart  -> uart.sensor, an A02YYUW-style sensor: frames 0xFF, high, low,
#                       checksum, distance in mm;
#   ultrasonic_pulse -> outputs.trigger + inputs.echo, HC-SR04 style;
#   pressure_adc     -> adc.pressure, a 4-20 mA transducer across a shunt.
import time

import machine
from micropython import const

from .pins import pin_no, table, uart

_ECHO_TIMEOUT_US = const(30000)  # ~5 m and back
_ADC_SAMPLES = const(8)


class IO:
    def __init__(self, hw, config):
        conf = hw.hw
        self.sensor = None
        self.trigger = None
        self.echo = None
        self.adc = None
        sensor = config.get("sensor.type")
        if sensor == "ultrasonic_uart":
            self.sensor = uart(conf, "sensor")
        elif sensor == "ultrasonic_pulse":
            self.trigger = machine.Pin(pin_no(table(conf, "outputs"), "trigger", "outputs"),
                                       machine.Pin.OUT, value=0)
            self.echo = machine.Pin(pin_no(table(conf, "inputs"), "echo", "inputs"),
                                    machine.Pin.IN)
        else:  # pressure_adc: 11 dB attenuation, full scale about 3.1 V
            self.adc = machine.ADC(machine.Pin(pin_no(table(conf, "adc"), "pressure", "adc")),
                                   atten=machine.ADC.ATTN_11DB)

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
