# Block devices for VfsLfs2 under the unix port: the ESP32's flash partition, kept in a host
# file (or in RAM), with the extended block protocol the ESP32 port's esp32.Partition speaks
# (readblocks/writeblocks with an offset, ioctl 6 erases a block to 0xFF as NOR flash does).
# PowerCut wraps one to model a power cut: after the Nth program or erase nothing more lands,
# and that Nth operation lands only in part (or not at all).
from micropython import const

from .filedev import BLOCK_SIZE, FileBlockDev

_IOCTL_SYNC = const(3)
_IOCTL_BLOCK_ERASE = const(6)

__all__ = ["BLOCK_SIZE", "FileBlockDev", "PowerCut", "PowerLost", "RamBlockDev"]


class PowerLost(Exception):
    """Raised by every operation after the cut: the node is dead until it is booted again."""


class RamBlockDev(FileBlockDev):
    """The same device in a bytearray (tests that need no file)."""

    def __init__(self, count, data=None):
        self.count = count
        self.data = bytearray(data) if data is not None else bytearray(b"\xff" * (
            count * BLOCK_SIZE))

    def readblocks(self, n, buf, off=0):
        a = n * BLOCK_SIZE + off
        buf[:] = self.data[a:a + len(buf)]

    def writeblocks(self, n, buf, off=0):
        a = n * BLOCK_SIZE + off
        self.data[a:a + len(buf)] = buf

    def erase(self, n):
        a = n * BLOCK_SIZE
        self.data[a:a + BLOCK_SIZE] = b"\xff" * BLOCK_SIZE

    def sync(self):
        pass

    def close(self):
        pass


class PowerCut:
    """Wraps a device: program/erase operations are counted (`writes`); the one numbered
    `cut_at` (1-based) lands only its first `keep` bytes (0: none; an erase then leaves the
    block as it was, a partial erase the first `keep` bytes 0xFF), and every operation after
    it raises PowerLost. cut_at=0 never cuts (count the writes of an operation first)."""

    def __init__(self, dev, cut_at=0, keep=0):
        self.dev = dev
        self.cut_at = cut_at
        self.keep = keep
        self.writes = 0
        self.dead = False

    def _tick(self):
        if self.dead:
            raise PowerLost()
        self.writes += 1
        if self.cut_at and self.writes >= self.cut_at:
            self.dead = True
            return True
        return False

    def readblocks(self, n, buf, off=0):
        if self.dead:
            raise PowerLost()
        self.dev.readblocks(n, buf, off)

    def writeblocks(self, n, buf, off=0):
        if self._tick():
            if self.keep:
                self.dev.writeblocks(n, buf[:min(self.keep, len(buf))], off)
            raise PowerLost()
        self.dev.writeblocks(n, buf, off)

    def ioctl(self, op, arg):
        if op == _IOCTL_BLOCK_ERASE:
            if self._tick():
                if self.keep:
                    self.dev.writeblocks(arg, b"\xff" * min(self.keep, BLOCK_SIZE), 0)
                raise PowerLost()
            return self.dev.ioctl(op, arg)
        if self.dead and op == _IOCTL_SYNC:
            raise PowerLost()
        return self.dev.ioctl(op, arg)
