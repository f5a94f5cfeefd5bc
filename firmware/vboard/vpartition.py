# esp32.Partition for the virtual board (vesp32.py hands it out as esp32.Partition): the OTA app
# partitions and the bootloader's rollback rule.
#
# The API of MicroPython's ports/esp32/esp32_partition.c: Partition(BOOT | RUNNING | label,
# block_size=4096), find(), info(), readblocks(block, buf[, offset]), writeblocks(block, buf[,
# offset]) (without offset: erase, then write; with it: no erase), ioctl (4 block count, 5 block
# size, 6 erase a block), set_boot(), get_next_update(), the classmethod
# mark_app_valid_cancel_rollback(). Two app partitions ota_0 / ota_1, each a file beside the
# flash image (vesp32.ROOT + ".ota_0"), programmed like NOR flash (a write can only clear bits;
# erase sets 0xFF), and the otadata (ROOT + ".otadata.json": which partition boots, each
# image's state). `bootloader()` is the ESP-IDF bootloader with app rollback enabled, run at
# every boot of a virtual board that has otadata (vboard/boot.py): an image set to boot is
# "new", booted once it is "pending_verify", and if the board resets before the app marks it
# valid it is "aborted" and the last valid image boots again.
from vboard import vesp32

_NATIVE = 4096
_SIZE = 0x180000  # MicroPython's partitions-4MiB-ota.csv: two app partitions of 1.5 MiB
_LABELS = ("ota_0", "ota_1")
_ADDR = (0x10000, 0x190000)


def _load():
    import json
    try:
        with open(vesp32.ROOT + ".otadata.json") as f:
            return json.load(f)
    except OSError:
        return {"boot": "ota_0", "running": "ota_0", "valid": "ota_0",
                "states": {"ota_0": "valid"}}


def _save(st):
    import json
    import os
    path = vesp32.ROOT + ".otadata.json"
    with open(path + ".tmp", "w") as f:
        f.write(json.dumps(st))
    os.rename(path + ".tmp", path)


def bootloader():
    """What the second-stage bootloader does at a reset; returns the label it boots."""
    st = _load()
    b = st["boot"]
    state = st["states"].get(b, "valid")
    if state == "pending_verify":  # booted before and never marked valid: roll back
        st["states"][b] = "aborted"
        b = st["boot"] = st["valid"]
    elif state == "new":
        st["states"][b] = "pending_verify"
    st["running"] = b
    _save(st)
    return b


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1

    def __init__(self, id, block_size=_NATIVE):
        if id == Partition.BOOT or id == Partition.RUNNING:
            label = _load()["boot" if id == Partition.BOOT else "running"]
        elif id in _LABELS:
            label = id
        elif isinstance(id, int):
            raise ValueError()
        else:
            raise OSError(2)  # ENOENT: no partition with that label
        self.label = label
        self.block_size = block_size

    def __repr__(self):
        return "<Partition type=0, subtype=%d, address=%d, size=%d, label=%s, encrypted=0>" % (
            self._i() + 0x10, _ADDR[self._i()], _SIZE, self.label)

    def _i(self):
        return _LABELS.index(self.label)

    def _path(self):
        return "%s.%s" % (vesp32.ROOT, self.label)

    @staticmethod
    def find(type=0, subtype=0xFF, label=None, block_size=_NATIVE):
        if type != Partition.TYPE_APP:
            return []
        return [Partition(n, block_size) for n in _LABELS if label is None or label == n]

    def info(self):
        return (0, 0x10 + self._i(), _ADDR[self._i()], _SIZE, self.label, False)

    def _read(self, at, n):
        try:
            with open(self._path(), "rb") as f:
                f.seek(at)
                data = f.read(n)
        except OSError:
            data = b""
        return data + b"\xff" * (n - len(data))  # never written: erased flash

    def _open(self, at, n):
        """The partition file for writing at `at`, grown with erased bytes up to it."""
        if at < 0 or at + n > _SIZE:
            raise OSError(22)  # ESP_ERR_INVALID_SIZE, as check_esp_err raises it
        try:
            f = open(self._path(), "r+b")
        except OSError:
            f = open(self._path(), "wb")
        end = f.seek(0, 2)
        if end < at:
            f.write(b"\xff" * (at - end))
        f.seek(at)
        return f

    def _program(self, at, data):
        old = self._read(at, len(data))
        new = bytes(a & b for a, b in zip(old, data))  # NOR flash: bits only go 1 -> 0
        with self._open(at, len(data)) as f:
            f.write(new)

    def _erase(self, at, n):
        with self._open(at, n) as f:
            f.write(b"\xff" * n)

    def readblocks(self, block, buf, offset=0):
        buf[:] = self._read(block * self.block_size + offset, len(buf))

    def writeblocks(self, block, buf, offset=None):
        at = block * self.block_size
        if offset is None:  # a simple write: erase first (whole native blocks)
            first = at // _NATIVE * _NATIVE
            last = (at + len(buf) + _NATIVE - 1) // _NATIVE * _NATIVE
            self._erase(first, last - first)
        else:
            at += offset
        self._program(at, bytes(buf))

    def ioctl(self, op, arg):
        if op in (1, 2, 3):
            return 0
        if op == 4:
            return _SIZE // self.block_size
        if op == 5:
            return self.block_size
        if op == 6:
            if self.block_size != _NATIVE:
                return -22
            self._erase(arg * _NATIVE, _NATIVE)
            return 0
        return None

    def set_boot(self):
        st = _load()
        st["boot"] = self.label
        st["states"][self.label] = "new"
        _save(st)

    def get_next_update(self):
        return Partition(_LABELS[1 - self._i()])

    @classmethod
    def mark_app_valid_cancel_rollback(cls):
        st = _load()
        st["states"][st["running"]] = "valid"
        st["valid"] = st["running"]
        _save(st)
