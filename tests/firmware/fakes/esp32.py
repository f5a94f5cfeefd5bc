# A fake `esp32` (wake sources) for the unix port: calls are recorded in machine.CALLS.
from machine import CALLS

WAKEUP_ALL_LOW = False
WAKEUP_ANY_HIGH = True


def wake_on_ext0(pin, level):
    CALLS.append(("wake_on_ext0", pin.id if pin is not None else None, level))


def wake_on_ext1(pins, level):
    CALLS.append(("wake_on_ext1", [p.id for p in pins or ()], level))
