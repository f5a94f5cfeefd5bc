"""Progress of one or several boards being flashed: one line per board on stderr.

On a terminal the lines are redrawn in place (a bar per board); otherwise (a log, CI, a pipe)
each board prints a plain line when its stage changes and at every quarter of the write,
so a log shows what happened without carriage returns.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from .flashing import Progress

BAR = 24


class ProgressView:
    """Thread-safe per-board progress lines; `callback(label)` feeds `flash_board`."""

    def __init__(self, labels: list[str], stream: TextIO | None = None,
                 tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.labels = labels
        self.width = max((len(label) for label in labels), default=0)
        self.lines = {label: "waiting" for label in labels}
        self._last: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()
        self._drawn = False

    def callback(self, label: str) -> Progress:
        """The Progress function for one board."""

        def progress(stage: str, done: int, total: int) -> None:
            pct = int(100 * done / total) if total > 0 else 0
            self.update(label, stage, pct)

        return progress

    def update(self, label: str, stage: str, pct: int) -> None:
        """Record a board's stage and percentage and show it."""
        with self._lock:
            if self.tty:
                filled = BAR * pct // 100
                self.lines[label] = f"{stage:<7} [{'#' * filled}{'.' * (BAR - filled)}] {pct:3d}%"
                self._redraw()
                return
            step = pct // 25 * 25 if stage == "write" else 0
            if self._last.get(label) == (stage, step):
                return
            self._last[label] = (stage, step)
            text = f"{stage} {step}%" if stage == "write" else stage
            self.stream.write(f"{label:<{self.width}}  {text}\n")
            self.stream.flush()

    def finish(self, label: str, text: str) -> None:
        """A board's last line: its result."""
        with self._lock:
            self.lines[label] = text
            if self.tty:
                self._redraw()
            else:
                self.stream.write(f"{label:<{self.width}}  {text}\n")
                self.stream.flush()

    def _redraw(self) -> None:
        if self._drawn:
            self.stream.write(f"\x1b[{len(self.labels)}F")  # cursor up to the first line
        for label in self.labels:
            self.stream.write(f"\x1b[2K{label:<{self.width}}  {self.lines[label]}\n")
        self.stream.flush()
        self._drawn = True
