"""A real MicroPython node whose saved state is lost (deleted, or damaged with a valid-looking
digit) and whose journal is empty, as on a replaced board keeping its id: the real gateway
(session manager, serial link, SQLite queue) tells it where to continue, its new records
continue above the highest seq stored for it, and every one of them arrives (PROTOCOL.md 2.2
rule 7). Before the fix the node restarted at seq 1 and the gateway dropped its records as
duplicates of the ones it already had."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import pytest
from roadside.gateway import protocol as p
from roadside.gateway.links.serial import SerialLink
from roadside.gateway.queue import Queue
from roadside.gateway.session import SessionManager
from roadside.tools.sim.launcher import NodeSpec, SimNode, build_mpy, resolve_scenario
from roadside.tools.sim.vflash import VFlash
from support.micropython import FIRMWARE

NODE = "wl-0001"
TEST_TIMEOUT_S = 150.0


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


def lose_state(node_dir: Path, how: str) -> None:
    """The node's flash (its LittleFS image) after the loss: no journal, and its state gone
    or damaged."""
    flash = VFlash(node_dir / "flash.img")
    names = flash.ls("/")
    # The node was stopped at any point, also between _save's two renames: its newest state
    # may then be state.json.tmp (state.json already moved to state.bak).
    newest = next(n for n in ("state.json", "state.json.tmp", "state.bak") if n in names)
    st = flash.get_json(newest)
    for name in ("journal.bin", "state.json", "state.bak", "state.json.tmp"):
        if name in names:
            flash.rm(name)
    if how == "damaged":   # one digit changed: still JSON, a counter far below the truth
        st["next_seq"] = 1
        st["acked"] = 0
        flash.put("state.json", json.dumps(st))


def produced(node_dir: Path) -> int:
    """The highest seq the stopped node gave (its journal's view after a load)."""
    out = VFlash(node_dir / "flash.img").run(
        f"import sys\nsys.path.insert(0, {'/host' + str(FIRMWARE)!r})\n"
        "from roadside_node.journal import Journal\n"
        "j = Journal(); j.load(boot=False)\nprint(j.next_seq - 1)")
    return int(out.split()[-1])


@pytest.mark.parametrize("how", ["deleted", "damaged"])
def test_a_node_that_lost_its_state_continues_above_the_stored_seqs(tmp_path, how):
    spec = NodeSpec(NODE, "water", resolve_scenario("water", "flood"), speed=20.0, seed=5)
    mpy = build_mpy()

    async def main() -> None:
        queue = Queue(tmp_path / "q.sqlite", "gw", "s")
        sessions = SessionManager(queue)
        # every record the node put into RECORDS, as the gateway got it: seq -> the rest
        sent: dict[int, tuple] = {}
        handle = sessions.handle

        async def watch(link, payload: bytes) -> None:
            with contextlib.suppress(Exception):
                msg = p.decode_message(payload)
                if isinstance(msg, p.Records):
                    for r in msg.records:
                        sent.setdefault(r.seq, (r.t, r.kind, r.flags, sorted(r.body.items())))
            await handle(link, payload)

        sessions.handle = watch  # type: ignore[method-assign]
        served: list[tuple[SimNode, SerialLink, asyncio.Task]] = []

        async def boot() -> None:
            node = SimNode(spec, tmp_path, mpy=mpy)
            await node.start()
            link = SerialLink(node.gateway_path, 115200, retry_s=0.1)
            await link.open()
            served.append((node, link, asyncio.create_task(sessions.serve(link))))

        async def stop() -> None:
            node, link, task = served.pop()
            await node.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await link.close()
            sessions.forget_link(link)

        try:
            await boot()
            await wait_for(lambda: queue.ack_of(NODE) >= 8, 40, "8 records of the first life")
            await stop()
            high = queue.highest_seq(NODE)
            node_dir = tmp_path / "nodes" / NODE
            lose_state(node_dir, how)
            sent.clear()
            second_life = time.time()

            await boot()
            await wait_for(lambda: queue.ack_of(NODE) >= high + 5, 40,
                           f"5 records above seq {high} after the state was lost")
            await stop()
            # Records the new life numbered from 1 (sent before the node heard where to
            # resume) were not stored under those seqs (they stand for the first life's) and
            # went out again, the same records, as high + 1, high + 2, ...
            early = [sent[s] for s in sorted(sent) if s <= high]
            moved = [sent.get(s) for s in range(high + 1, high + 1 + len(early))]
            assert early == moved, f"records sent under seqs <= {high} were not renumbered"
            stored_again = [seq for _, seq, received, _ in queue.stored(NODE, 0, high)
                            if received >= second_life]
            assert stored_again == []
            log = (tmp_path / "logs" / f"{NODE}.log").read_text()
            assert f"resume at {high + 1}" in log, log[-2000:]

            # Everything the node gave in its second life arrives: boot once more (its state is
            # whole now: no second resume) and drain its journal.
            last = produced(node_dir)
            await boot()
            await wait_for(lambda: queue.ack_of(NODE) >= last, 40, f"seq {last} stored")
            await stop()
            log = (tmp_path / "logs" / f"{NODE}.log").read_text()
            assert log.count("resume at") == 1 and log.count("renumbering") <= 1, log[-2000:]
            seqs = [seq for _, seq, _, _ in queue.stored(NODE)]
            assert seqs == list(range(1, len(seqs) + 1)) and seqs[-1] >= last
            assert queue.nodes[NODE].gaps == 0
        finally:
            while served:
                await stop()
            queue.close()

    asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT_S))
