# esp32 for the virtual board (vboard/boot.py installs it as `esp32`): wake sources are
# accepted and ignored.
WAKEUP_ALL_LOW = False
WAKEUP_ANY_HIGH = True


def wake_on_ext0(pin, level):
    pass


def wake_on_ext1(pins, level):
    pass
