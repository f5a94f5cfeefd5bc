"""A real MicroPython node at the board's heap against a gateway under stress (issue 9, items 6
and 7): sustained backpressure must not reset the node, and a noisy line must slow delivery
down, never stop it. The node is tools/sim/launcher.py's SimNode (its heap, its cable, its
restarts); the gateway end is tests/support/line_gateway.py, speaking the real wire protocol.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from roadside.tools.sim.launcher import NodeSpec, SimNode, build_mpy, resolve_scenario
from roadside.tools.sim.virtual_cable import TO_GATEWAY, TO_NODE
from support.line_gateway import ANSWER, BUSY, SILENT, LineGateway, LogWatcher

pytestmark = pytest.mark.slow

TEST_TIMEOUT_S = 150.0


def _node(tmp_path: Path, role: str, scenario: str, speed: float, **config) -> SimNode:
    spec = NodeSpec(f"{role[:2]}-stress", role, resolve_scenario(role, scenario), speed=speed,
                    seed=3, config=config)
    return SimNode(spec, tmp_path, mpy=build_mpy())


def _log(node: SimNode) -> str:
    return node.log.read_text(errors="replace") if node.log.exists() else ""


def _produced(node: SimNode) -> int:
    """The highest seq the node journaled, from its log ("seq N ...")."""
    hi = 0
    for line in _log(node).splitlines():
        if line.startswith("seq "):
            hi = max(hi, int(line.split()[1]))
    return hi


async def _wait_log(node: SimNode, text: str, timeout: float, start: int = 0) -> None:
    deadline = time.monotonic() + timeout
    while text not in _log(node)[start:]:
        assert node.state != f"exited {node.exit_status}", _log(node)[-2000:]
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} in the node log after {timeout:.0f} s:\n"
                                 + _log(node)[-2000:])
        await asyncio.sleep(0.1)


def _run(main) -> None:
    asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT_S))


@pytest.mark.parametrize("role,scenario,speed", [("water", "flood", 400)])
def test_node_survives_backpressure_with_a_full_journal_at_board_heap(tmp_path, role,
                                                                      scenario, speed):
    """Busy for long enough that the journal fills (32 KiB), then silence (go-back-N every ACK
    timeout), then busy again: the node resends ~1 KB frames for a minute at the board's
    heap (tools/sim/launcher.py HEAPSIZE). No MemoryError, no reset; afterwards everything drains.
    (docs/RELIABILITY.md "Backpressure" has the toll node's soak.)"""
    node = _node(tmp_path, role, scenario, speed=speed)
    gw = LineGateway(node.gateway_path)

    async def main():
        await node.start()
        gw.mode = BUSY
        gw.start()
        try:
            await _wait_log(node, "journal full", 90)
            gw.mode = SILENT
            await asyncio.sleep(8)  # go-back-N resends of the whole window
            gw.mode = BUSY
            await asyncio.sleep(8)
            assert gw.busy_sent > 10, "the node never met backpressure"
            gw.mode = ANSWER
            await gw.wait_for(lambda: gw.acked >= 400, 60, "the backlog to drain")
        finally:
            gw.close()
            await node.stop()

    _run(main)
    log = _log(node)
    assert "MemoryError" not in log, log[-3000:]
    assert node.resets == 0 and node.starts == 1, log[-3000:]
    assert sorted(gw.records) == list(range(1, max(gw.records) + 1))


@pytest.mark.parametrize("ber", [1e-3])
def test_noisy_line_delivers_every_record_and_alarms_fast(tmp_path, ber):
    """Bits flip at `ber` in both directions (records to the gateway, ACKs to the node): every
    record the water node journals arrives, alarms within 2 s of being journaled. Then a clean
    line after a stall: the node grows its frames back (many records per frame again)."""
    node = _node(tmp_path, "water", "flood", speed=40)
    gw = LineGateway(node.gateway_path)
    watch = LogWatcher(node.log)
    rate = 8 * ber  # the cable flips one bit per byte with this probability
    clean: dict = {}

    async def main():
        await node.start()
        node.cable.set_bit_flips(rate, seed=11, direction=TO_GATEWAY)
        node.cable.set_bit_flips(rate, seed=12, direction=TO_NODE)
        gw.start()
        watch.start()
        try:
            await asyncio.sleep(25)  # the flood rises: levels every few seconds, alarms
            produced = watch.produced
            assert produced > 40, _log(node)[-2000:]
            await gw.wait_for(lambda: gw.acked >= produced, 40,
                              f"all {produced} records through the noise")
            clean["noisy"] = dict(gw.dec.counters())
            # a clean line, a stalled gateway (timeouts shrink the frames), then ACKs again
            node.cable.set_bit_flips(0, direction=TO_GATEWAY)
            node.cable.set_bit_flips(0, direction=TO_NODE)
            gw.mode = SILENT
            await asyncio.sleep(5)
            gw.mode = ANSWER
            clean["log_at"] = len(_log(node))
            await _wait_log(node, "line clean: frames of 1024 B again", 40, clean["log_at"])
            target = clean["target"] = watch.produced
            await gw.wait_for(lambda: gw.acked >= target, 30, "records after the stall")
        finally:
            await watch.stop()
            gw.close()
            await node.stop()

    _run(main)
    flips = node.cable.counters()
    assert flips[TO_GATEWAY]["flipped"] > 50 and flips[TO_NODE]["flipped"] > 5, flips
    noisy = clean["noisy"]
    assert noisy["crc"] + noisy["cobs"] > 10, noisy
    assert watch.memory_errors == 0 and node.resets == 0
    assert sorted(gw.records) == list(range(1, max(gw.records) + 1))
    # alarms once the session runs (the first record arrived 5 s before): the HELLO exchange
    # at boot goes through the same noise and is retried every 3 s (session._HELLO_RETRY_MS)
    steady = min(gw.arrived.values()) + 5
    # the alarms the test waited for (the node journals on until it is stopped: a later one
    # may still be on its way)
    late = {s: round(gw.arrived[s] - watch.journaled[s], 3) for s in watch.alarms
            if s <= clean["target"] and watch.journaled.get(s, 0) > steady}
    assert late, "the flood raised no alarm: the test sees nothing"
    assert max(late.values()) < 2.0, late
