# ESP32 hardware of the signal monitor (roles/signal.py), from the node config's `hw` section
# (written by the deploy step from the board file, e.g. boards/roadside-signal-monitor-r1.toml):
#   "inputs":  {"phase1_red": 4, "phase1_amber": 5, "phase1_green": 6, ..., "loop_1": 12, ...},
#   "outputs": {"plan_bit0": 37, "plan_bit1": 38, "plan_strobe": 39, "fault_relay": 40}
# Lamp and loop inputs are optocouplers / dry contacts pulling the pin low when active: the
# pins get pull-ups and a low level means lit / vehicle. The fault relay is fail-safe
# (energised while there is no fault). The plan goes out as a binary number (plan - 1) on the
# plan_bitN outputs, latched by a 100 ms pulse on plan_strobe.
import time

import machine
from micropython import const

from ..proto import CommandError
from .pins import pin_no, table

_STROBE_MS = const(100)
_LAMPS = ("red", "amber", "green")


class Clock:
    """Role-clock milliseconds since boot, kept monotonic across ticks_ms wrap-around."""

    def __init__(self):
        self.last = time.ticks_ms()
        self.ms = 0

    def now(self):
        t = time.ticks_ms()
        self.ms += time.ticks_diff(t, self.last)
        self.last = t
        return self.ms


class IO:
    """What roles/signal.py reads and drives: hw is the base layer (hw/esp32.py)."""

    def __init__(self, hw, config):
        phases = config.get("phases")
        inputs = table(hw.hw, "inputs")
        outputs = table(hw.hw, "outputs")
        self.clock = Clock()
        self.heads = []  # per phase: (red, amber, green) pins
        for ph in range(1, phases + 1):
            pins = []
            for lamp in _LAMPS:
                n = pin_no(inputs, "phase%d_%s" % (ph, lamp), "inputs")
                pins.append(machine.Pin(n, machine.Pin.IN, machine.Pin.PULL_UP))
            self.heads.append(pins)
        self.buf = bytearray(phases)
        nos = []
        k = 1
        while "loop_%d" % k in inputs:
            nos.append(pin_no(inputs, "loop_%d" % k, "inputs"))
            k += 1
        self.counts = [0] * len(nos)  # vehicles per loop since the last loop_counts()
        self.loops = []
        for i in range(len(nos)):
            pin = machine.Pin(nos[i], machine.Pin.IN, machine.Pin.PULL_UP)
            pin.irq(trigger=machine.Pin.IRQ_FALLING, handler=self._counter(i))
            self.loops.append(pin)
        self.plan_bits = []
        k = 0
        while "plan_bit%d" % k in outputs:
            self.plan_bits.append(machine.Pin(pin_no(outputs, "plan_bit%d" % k, "outputs"),
                                              machine.Pin.OUT, value=0))
            k += 1
        self.strobe = None
        if "plan_strobe" in outputs:
            self.strobe = machine.Pin(pin_no(outputs, "plan_strobe", "outputs"),
                                      machine.Pin.OUT, value=0)
        self.relay = None
        if "fault_relay" in outputs:  # fail-safe: energised = no fault
            self.relay = machine.Pin(pin_no(outputs, "fault_relay", "outputs"),
                                     machine.Pin.OUT, value=1)

    def _counter(self, i):
        counts = self.counts

        def handler(_pin):
            counts[i] += 1  # a vehicle arrived at loop i + 1

        return handler

    def signal_samples(self):
        """[(t_ms, heads)]: one scan of every lamp input now (bits 1 red, 2 amber, 4 green)."""
        buf = self.buf
        for i in range(len(self.heads)):
            r, a, g = self.heads[i]
            buf[i] = (r.value() == 0) | ((a.value() == 0) << 1) | ((g.value() == 0) << 2)
        return [(self.clock.now(), buf)]

    def loop_counts(self):
        state = machine.disable_irq()
        out = self.counts[:]
        for i in range(len(out)):
            self.counts[i] = 0
        machine.enable_irq(state)
        return out

    def plan_select(self, plan):
        bits = self.plan_bits
        if not bits or plan - 1 >= 1 << len(bits):
            raise CommandError("plan.select: the controller interface has %d plan bits: "
                               "plans 1 to %d" % (len(bits), 1 << len(bits)))
        for k in range(len(bits)):
            bits[k].value(((plan - 1) >> k) & 1)
        if self.strobe is not None:
            self.strobe.value(1)
            time.sleep_ms(_STROBE_MS)
            self.strobe.value(0)

    def fault_output(self, active):
        if self.relay is not None:
            self.relay.value(0 if active else 1)
