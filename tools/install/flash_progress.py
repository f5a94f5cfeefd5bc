"""Progress of one or several boards being flashed: one line per board on stderr.

On a terminal it is a rich.progress display, a bar per board (label, stage, bar, percent,
elapsed time), redrawn by rich in place and fitted to the terminal's width when it is
resized; several boards flashed from threads update it at once. Otherwise (a log, CI, a pipe)
each board prints a plain line when its stage changes and at every quarter of the write, so a
log shows what happened without escape codes.

Use it as a context manager: leaving it stops the display (and shows the cursor again),
also when flashing raises.
"""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import (
    Progress as RichProgress,
)

from .flashing import Progress


class ProgressView:
    """Thread-safe per-board progress; `callback(label)` feeds `flash_board`."""

    def __init__(self, labels: list[str], stream: TextIO | None = None,
                 tty: bool | None = None, stepped: str = "write") -> None:
        self.stream = stream or sys.stderr
        self.stepped = stepped      # the stage printed at every quarter without a terminal
        self.tty = self.stream.isatty() if tty is None else tty
        self.labels = labels
        self.width = max((len(label) for label in labels), default=0)
        self._last: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()
        self.bars: RichProgress | None = None
        self._tasks: dict[str, TaskID] = {}
        if self.tty:
            console = Console(file=self.stream, force_terminal=True, highlight=False)
            self.bars = RichProgress(
                TextColumn(f"{{task.fields[label]:<{self.width}}}", markup=False),
                TextColumn("{task.fields[stage]:<7}", markup=False),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[result]}", markup=False),
                console=console, redirect_stdout=False, redirect_stderr=False,
                refresh_per_second=8)
            for label in labels:
                self._tasks[label] = self.bars.add_task(label, total=100, label=label,
                                                        stage="waiting", result="")

    def __enter__(self) -> ProgressView:
        if self.bars is not None:
            self.bars.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop the display (its last state stays on the terminal)."""
        if self.bars is not None:
            self.bars.stop()

    def callback(self, label: str) -> Progress:
        """The Progress function for one board."""

        def progress(stage: str, done: int, total: int) -> None:
            pct = int(100 * done / total) if total > 0 else 0
            self.update(label, stage, pct)

        return progress

    def update(self, label: str, stage: str, pct: int) -> None:
        """Record a board's stage and percentage and show it."""
        if self.bars is not None:
            self.bars.update(self._tasks[label], completed=pct, stage=stage)
            return
        with self._lock:
            step = pct // 25 * 25 if stage == self.stepped else 0
            if self._last.get(label) == (stage, step):
                return
            self._last[label] = (stage, step)
            text = f"{stage} {step}%" if stage == self.stepped else stage
            self.stream.write(f"{label:<{self.width}}  {text}\n")
            self.stream.flush()

    def finish(self, label: str, text: str) -> None:
        """A board's last line: its result."""
        if self.bars is not None:
            task = self._tasks[label]
            self.bars.update(task, stage="done" if text.startswith("ok") else "stopped",
                             result=text)
            self.bars.stop_task(task)
            self.bars.refresh()
            return
        with self._lock:
            self.stream.write(f"{label:<{self.width}}  {text}\n")
            self.stream.flush()
