"""The virtual cable: real ptys on both ends, an asyncio relay between them."""

from __future__ import annotations

import asyncio
import os
import termios
import tty

import pytest
from roadside.tools.sim.virtual_cable import TO_GATEWAY, TO_NODE, VirtualCable


def open_raw(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd, termios.TCSANOW)
    return fd


async def read_exactly(fd: int, n: int, timeout: float = 5.0) -> bytes:
    buf = b""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(buf) < n:
        try:
            buf += os.read(fd, n - len(buf))
        except BlockingIOError:
            if loop.time() > deadline:
                raise TimeoutError(f"got {len(buf)} of {n} bytes") from None
            await asyncio.sleep(0.01)
    return buf


@pytest.fixture
def cable():
    c = VirtualCable()
    fds: list[int] = []
    try:
        yield c, fds
    finally:
        for fd in fds:
            os.close(fd)
        c.close()


def test_bytes_cross_both_ways_unchanged(cable):
    c, fds = cable

    async def main():
        await c.start()
        node, gw = open_raw(c.node_path), open_raw(c.gateway_path)
        fds.extend([node, gw])
        data = bytes(range(256)) * 40  # more than one pty buffer, every byte value
        os.write(node, data[:4000])
        got = await read_exactly(gw, 4000)
        os.write(gw, b"ack\x00")
        back = await read_exactly(node, 4)
        return data[:4000], got, back

    sent, got, back = asyncio.run(main())
    assert got == sent and back == b"ack\x00"
    assert c.counters()[TO_GATEWAY]["bytes"] == 4000 and c.counters()[TO_NODE]["bytes"] == 4


def test_unplug_drops_and_plug_resumes(cable):
    c, fds = cable

    async def main():
        await c.start()
        node, gw = open_raw(c.node_path), open_raw(c.gateway_path)
        fds.extend([node, gw])
        c.unplug()
        os.write(node, b"lost")
        await asyncio.sleep(0.2)
        c.plug()
        os.write(node, b"kept")
        return await read_exactly(gw, 4)

    assert asyncio.run(main()) == b"kept"
    assert c.counters()[TO_GATEWAY]["dropped"] == 4


def test_bit_flips_and_injection_damage_the_stream(cable):
    c, fds = cable

    async def main():
        await c.start()
        node, gw = open_raw(c.node_path), open_raw(c.gateway_path)
        fds.extend([node, gw])
        c.inject(b"\x55garbage")
        first = await read_exactly(gw, 8)
        c.set_bit_flips(0.5, seed=1)
        os.write(node, bytes(1000))
        damaged = await read_exactly(gw, 1000)
        return first, damaged

    first, damaged = asyncio.run(main())
    assert first == b"\x55garbage"
    flipped = c.counters()[TO_GATEWAY]["flipped"]
    assert 300 < flipped < 700 and sum(bin(b).count("1") for b in damaged) == flipped


def test_a_side_closing_and_reopening_keeps_the_cable_working(cable):
    c, fds = cable

    async def main():
        await c.start()
        gw = open_raw(c.gateway_path)
        fds.append(gw)
        for i in range(3):  # a node that resets three times
            node = open_raw(c.node_path)
            os.write(node, b"boot%d" % i)
            assert await read_exactly(gw, 5) == b"boot%d" % i
            os.close(node)
            await asyncio.sleep(0.05)

    asyncio.run(main())
