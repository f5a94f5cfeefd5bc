"""A virtual serial cable: two ptys whose masters an asyncio relay bridges.

The node opens `node_path`, the gateway opens `gateway_path`; both are real tty devices, so
both sides run exactly the code they run on a USB-UART. The relay can damage the traffic for
tests: inject bytes, flip random bits, or "unplug" the cable (bytes are dropped, like a loose
connector).

The cable keeps its own slave fds open, so a side that closes its end (a node reset, a killed
gateway) never makes the other side's master read EIO, and the path stays valid for the next
open, like a cable that stays plugged into the board.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import random
import tty
from dataclasses import dataclass, field

# A real UART drops bytes when nobody reads; we buffer this much per direction, then drop.
MAX_PENDING = 64 * 1024
TO_GATEWAY = "to_gateway"
TO_NODE = "to_node"


@dataclass
class Direction:
    """One direction of the cable: its counters and its damage settings."""

    name: str
    src: int                    # master fd we read from
    dst: int                    # master fd we write to
    bytes: int = 0              # bytes relayed (after damage)
    dropped: int = 0            # bytes dropped (unplugged, or buffer full)
    flipped: int = 0            # bits flipped
    injected: int = 0           # bytes injected
    flip_rate: float = 0.0      # probability per byte that one bit flips
    pending: bytearray = field(default_factory=bytearray)
    rng: random.Random = field(default_factory=random.Random)

    def damage(self, data: builtins.bytes) -> builtins.bytes:  # `bytes` is a field here
        if not self.flip_rate:
            return data
        out = bytearray(data)
        for i in range(len(out)):
            if self.rng.random() < self.flip_rate:
                out[i] ^= 1 << self.rng.randrange(8)
                self.flipped += 1
        return bytes(out)


class VirtualCable:
    """`VirtualCable()`, then `await start()` inside a running loop; `close()` ends it."""

    def __init__(self, name: str = "cable") -> None:
        self.name = name
        self._node_master, self._node_slave = os.openpty()
        self._gw_master, self._gw_slave = os.openpty()
        for fd in (self._node_slave, self._gw_slave):
            tty.setraw(fd)  # no echo or line discipline before the real opener configures it
        for fd in (self._node_master, self._gw_master):
            os.set_blocking(fd, False)
        self.node_path = os.ttyname(self._node_slave)
        self.gateway_path = os.ttyname(self._gw_slave)
        self.directions = {
            TO_GATEWAY: Direction(TO_GATEWAY, self._node_master, self._gw_master),
            TO_NODE: Direction(TO_NODE, self._gw_master, self._node_master),
        }
        self.plugged = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for d in self.directions.values():
            self._loop.add_reader(d.src, self._on_readable, d)

    def close(self) -> None:
        """Stop relaying and close all four fds; safe to call twice (fd numbers get reused)."""
        if self.closed:
            return
        self.closed = True
        if self._loop is not None:
            for d in self.directions.values():
                self._loop.remove_reader(d.src)
                self._loop.remove_writer(d.dst)
            self._loop = None
        for fd in (self._node_master, self._node_slave, self._gw_master, self._gw_slave):
            try:
                os.close(fd)
            except OSError:
                pass

    # -- test hooks (call them on the loop's thread, or via call_soon_threadsafe) --------

    def unplug(self) -> None:
        """Stop relaying: bytes from both sides are dropped until plug()."""
        self.plugged = False

    def plug(self) -> None:
        self.plugged = True

    def set_bit_flips(self, rate: float, seed: int | None = None, direction: str = TO_GATEWAY
                      ) -> None:
        """Flip one random bit in each byte with probability `rate` (0 turns it off)."""
        d = self.directions[direction]
        d.flip_rate = rate
        d.rng = random.Random(seed)

    def inject(self, data: bytes, direction: str = TO_GATEWAY) -> None:
        """Send `data` down the cable as if it were line noise."""
        d = self.directions[direction]
        d.injected += len(data)
        self._send(d, data)

    def counters(self) -> dict[str, dict[str, int]]:
        return {
            d.name: {"bytes": d.bytes, "dropped": d.dropped, "flipped": d.flipped,
                     "injected": d.injected}
            for d in self.directions.values()
        }

    # -- relay ---------------------------------------------------------------------------

    def _on_readable(self, d: Direction) -> None:
        try:
            data = os.read(d.src, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # EIO would mean no slave is open; we hold one, so this is transient
        if not data:
            return
        if not self.plugged:
            d.dropped += len(data)
            return
        self._send(d, d.damage(data))

    def _send(self, d: Direction, data: bytes) -> None:
        room = MAX_PENDING - len(d.pending)
        if len(data) > room:
            d.dropped += len(data) - room
            data = data[:room]
        first = not d.pending
        d.pending += data
        if first:
            self._flush(d)

    def _flush(self, d: Direction) -> None:
        while d.pending:
            try:
                n = os.write(d.dst, d.pending)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                d.dropped += len(d.pending)
                d.pending.clear()
                break
            d.bytes += n
            del d.pending[:n]
        if self._loop is None:
            return
        if d.pending:
            self._loop.add_writer(d.dst, self._flush, d)
        else:
            self._loop.remove_writer(d.dst)
