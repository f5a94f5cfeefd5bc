"""Helpers for the installer-tool tests: a virtual board, a simulated node in a thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from roadside.tools.sim.launcher import Simulation
from roadside.tools.sim.virtual_board import VirtualBoard


@contextmanager
def virtual_board(directory: Path, **kwargs: Any) -> Iterator[VirtualBoard]:
    """A started virtual MicroPython board, closed (interpreter killed, ptys closed) after."""
    board = VirtualBoard(directory, **kwargs).start()
    try:
        yield board
    finally:
        board.close()


def wait_repl(board: VirtualBoard, timeout: float = 20.0, since: int = 0) -> None:
    """Wait until a blank board shows its REPL prompt (in its console log after byte `since`:
    the log's size before a reset). The unix port dies of a Ctrl-C that lands after its boot
    script ended and before its REPL took the terminal (the window a connect right after
    start() or reset() can hit); tests that are not about booting wait this out."""
    deadline = time.monotonic() + timeout
    while b">>> " not in (board.log.read_bytes()[since:] if board.log.exists() else b""):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the virtual board in {board.dir} showed no REPL prompt")
        time.sleep(0.02)


@contextmanager
def running_simulation(sim: Simulation) -> Iterator[Simulation]:
    """Run a tools.sim.Simulation on its own event loop thread (the tool under test is
    synchronous and opens the gateway end of each cable itself)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(sim.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not ready.wait(20):
        raise RuntimeError("simulation did not start")
    try:
        yield sim
    finally:
        asyncio.run_coroutine_threadsafe(sim.stop(), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
