# ESP32 hardware of the rain gauge (roles/rain.py): the tipping bucket's reed contact on
# inputs.rain_tip of the node config's `hw` section (deploy writes it from the board file,
# boards/roadside-rain-gauge-r1.toml), pulling the pin low at each tip. While awake a falling
# edge interrupt counts the tips (edges closer than debounce_ms to the previous one are contact
# bounce); in deep sleep the same pin wakes the board (ext0, low) and that wake is one tip.
import time

import machine

from .pins import pin_no, table


class IO:
    def __init__(self, hw, config):
        inputs = table(hw.hw, "inputs")
        self.debounce = config.get("debounce_ms")
        self.count = 1 if hw.woke_by_pin() else 0  # the tip that woke the board
        self.last = time.ticks_ms()
        self.pin = machine.Pin(pin_no(inputs, "rain_tip", "inputs"), machine.Pin.IN,
                               machine.Pin.PULL_UP)
        self.pin.irq(trigger=machine.Pin.IRQ_FALLING, handler=self._tip)
        hw.wake_pin(self.pin, 0)

    def _tip(self, _pin):
        t = time.ticks_ms()
        if time.ticks_diff(t, self.last) >= self.debounce:
            self.count += 1
        self.last = t

    def tips(self):
        state = machine.disable_irq()
        n = self.count
        self.count = 0
        machine.enable_irq(state)
        return n
