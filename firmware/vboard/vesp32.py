# esp32 for the virtual board (vboard/boot.py installs it as `esp32`): wake sources are
# accepted and ignored.
WAKEUP_ALL_LOW = False
WAKEUP_ANY_HIGH = True


def wake_on_ext0(pin, level):
    pass


def wake_on_ext1(pins, level):
    pass


# esp32.Partition and the bootloader's rollback rule: vboard/vpartition.py, loaded only when
# asked for (this module is compiled from source in the board's heap at every boot)
ROOT = "ota"  # host path prefix of the OTA partition files (vboard/boot.py sets it)


def __getattr__(name):
    if name in ("Partition", "bootloader"):
        from vboard import vpartition
        return getattr(vpartition, name)
    raise AttributeError(name)
