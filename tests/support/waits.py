"""Waiting on an event instead of sleeping a fixed time before an assertion: as quick as the
event on an idle machine, and still right on a loaded one (up to the bound)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(ok: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Return once ok() is truthy (polled every 10 ms); AssertionError naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.01)
