# The flash partition of a simulated node or virtual board in a host file, as
# esp32.Partition serves it on the board: 4 KiB blocks, readblocks/writeblocks with an
# offset, ioctl 6 erases a block to 0xFF as NOR flash does. Kept apart from blockdev.py's
# test devices so that a node loads only this: on the board the driver is C and takes no
# Python heap, here every class costs the node's heap.
from micropython import const

BLOCK_SIZE = const(4096)  # an ESP32 flash sector, esp32.Partition's block size
_IOCTL_SYNC = const(3)
_IOCTL_BLOCK_COUNT = const(4)
_IOCTL_BLOCK_SIZE = const(5)
_IOCTL_BLOCK_ERASE = const(6)
_ERASE_STEP = const(256)
_BLANK = b"\xff" * _ERASE_STEP


class FileBlockDev:
    """`count` blocks of BLOCK_SIZE bytes in the host file `path` (created erased if missing
    or short)."""

    def __init__(self, path, count):
        self.count = count
        try:
            self.f = open(path, "r+b")
        except OSError:
            self.f = open(path, "w+b")
        self.f.seek(0, 2)
        size = self.f.tell()
        want = count * BLOCK_SIZE
        if size < want:  # erased flash reads 0xFF
            while size < want:
                n = min(_ERASE_STEP, want - size)
                self.f.write(_BLANK if n == _ERASE_STEP else _BLANK[:n])
                size += n
            self.f.flush()

    def readblocks(self, n, buf, off=0):
        self.f.seek(n * BLOCK_SIZE + off)
        self.f.readinto(buf)

    def writeblocks(self, n, buf, off=0):
        self.f.seek(n * BLOCK_SIZE + off)
        self.f.write(buf)

    def erase(self, n):
        # in steps from one small buffer: a node's heap (96 KiB) has no room for 4 KiB each
        # time, and on the board the flash driver erases without the Python heap at all
        self.f.seek(n * BLOCK_SIZE)
        for _ in range(BLOCK_SIZE // _ERASE_STEP):
            self.f.write(_BLANK)

    def ioctl(self, op, arg):
        if op == _IOCTL_BLOCK_COUNT:
            return self.count
        if op == _IOCTL_BLOCK_SIZE:
            return BLOCK_SIZE
        if op == _IOCTL_BLOCK_ERASE:
            self.erase(arg)
            return 0
        if op == _IOCTL_SYNC:
            self.sync()
        return 0

    def sync(self):
        self.f.flush()

    def close(self):
        self.f.close()
