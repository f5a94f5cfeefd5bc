"""The queue's one writer thread and the one hand-off between it and the event loop.

A job (a queue method and its arguments) goes into a thread-safe FIFO with the asyncio future
its caller awaits; the writer thread runs the jobs in order and hands the results back with
one `call_soon_threadsafe` per round. Consecutive jobs of the group method (storing a node's
message) are run as one call of it, so the messages of every link that arrive while a commit
is on the disk are stored in one transaction (one fsync): group commit without a task on the
event loop. Callers go through gateway/queue/aio.py, never through this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

# One job: the method, its arguments (for the group method: the one item), the future.
Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]
_CLOSE = object()


class Writer:
    """Runs jobs on one thread, in submission order. `group` (items -> one result per item,
    an Exception instance for an item that failed alone) takes up to `group_max` consecutive
    items in one call."""

    def __init__(self, group: Callable[[list[Any]], list[Any]], group_max: int) -> None:
        self.group = group
        self.group_max = group_max
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Queue `fn(*args)` for the writer thread; the returned future (of the running loop)
        gets its result."""
        if self._closed:
            raise RuntimeError("the queue is closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="queue", daemon=True)
            self._thread.start()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._jobs.put((fn, args, future))
        return future

    def submit_grouped(self, item: Any) -> asyncio.Future[Any]:
        """Queue one item of the group method (it shares a transaction with its neighbours)."""
        return self.submit(self.group, item)

    def close(self) -> None:
        """Run what was submitted, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._jobs.put(_CLOSE)
            self._thread.join()

    def _run(self) -> None:
        held: Any = None
        while True:
            job = held if held is not None else self._jobs.get()
            held = None
            if job is _CLOSE:
                return
            fn, args, future = job
            if fn is self.group:
                items, futures = [args[0]], [future]
                while len(items) < self.group_max:
                    try:
                        nxt = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _CLOSE or nxt[0] is not self.group:
                        held = nxt            # runs next, after this group
                        break
                    items.append(nxt[1][0])
                    futures.append(nxt[2])
                try:
                    results = fn(items)
                    if len(results) != len(items):
                        raise RuntimeError(f"{len(results)} results for {len(items)} items")
                except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
                    results = [exc] * len(items)
                done = list(zip(futures, results, strict=True))
            else:
                try:
                    done = [(future, fn(*args))]
                except BaseException as exc:  # noqa: BLE001 - handed to its caller
                    done = [(future, exc)]
            with contextlib.suppress(RuntimeError):      # the loop is closed: nobody waits
                future.get_loop().call_soon_threadsafe(_settle, done)


def _settle(done: list[tuple[asyncio.Future[Any], Any]]) -> None:
    """On the loop: hand each result (an exception instance: raised) to its future."""
    for future, result in done:
        if future.done():
            continue                          # its caller was cancelled
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
