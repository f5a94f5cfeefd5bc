"""What a command is doing, so Ctrl-C can say what it interrupted and how it left the board.

A long command says what it is doing and the state an interruption leaves:

    with interrupted.doing(f"connecting to {port}", "nothing was written: the board is "
                           "unchanged") as step:
        ...
        step.update(f"writing {port} at 0x10000 (42%)", "the board has a partial image ...")

`cli.main` catches KeyboardInterrupt, prints `roadside CMD: interrupted while WHAT: STATE`
(from the innermost step still open) and exits 130, as a shell does for SIGINT.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a process Ctrl-C stopped


@dataclass
class Step:
    """One thing a command is doing and the state it leaves if interrupted now."""

    what: str
    leaves: str

    def update(self, what: str | None = None, leaves: str | None = None) -> None:
        if what is not None:
            self.what = what
        if leaves is not None:
            self.leaves = leaves


_steps: list[Step] = []


@contextmanager
def doing(what: str, leaves: str) -> Iterator[Step]:
    """Register `what` (and the state `leaves`) for as long as the block runs.

    Left registered when the block is left by an exception, so that cli.main can still say
    what was interrupted; cleared by `clear()` (cli.main does, after each command)."""
    step = Step(what, leaves)
    _steps.append(step)
    yield step
    if step in _steps:
        _steps.remove(step)


def current() -> Step | None:
    """The innermost step still registered, if any."""
    return _steps[-1] if _steps else None


def clear() -> None:
    _steps.clear()


def message(command: str) -> str:
    """The line Ctrl-C prints for `roadside COMMAND`."""
    step = current()
    if step is None:
        return f"roadside {command}: interrupted (Ctrl-C)"
    return f"roadside {command}: interrupted while {step.what}: {step.leaves}"


def flash_tracker(step: Step, port: str, offset: int,
                  then: Callable[[str, int, int], None] | None = None,
                  ) -> Callable[[str, int, int], None]:
    """A flashing.Progress callback that keeps `step` saying where a flash is, then calls
    `then` (the progress view)."""
    again = "run `roadside flash` again (it rewrites the whole image)"

    def track(stage: str, done: int, total: int) -> None:
        if stage == "connect":
            step.update(f"connecting to {port}", "nothing was written: the board is unchanged")
        elif stage == "erase":
            step.update(f"erasing the flash of {port}",
                        f"the flash is partly erased and the board will not boot; {again}")
        elif stage == "write":
            pct = 100 * done // total if total else 0
            step.update(f"writing 0x{offset:x} on {port} ({pct}%)",
                        f"the board has a partial image and will not boot it; {again}")
        elif stage == "verify":
            step.update(f"verifying the image on {port}",
                        f"the image is written but not verified; {again} to be sure")
        elif stage == "done":
            step.update(f"resetting {port}",
                        "the image is written and verified; press the board's EN (reset)")
        if then is not None:
            then(stage, done, total)

    return track
