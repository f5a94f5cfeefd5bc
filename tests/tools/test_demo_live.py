"""`roadside demo` on a real terminal: the live table (rich.live) is drawn in place, is laid
out again when the terminal is resized, and leaves the cursor shown when the demo ends.

The demo runs as the CLI runs it, its stdout a pty whose size the test sets (TIOCSWINSZ) and
changes while it runs (then SIGWINCH, as a terminal emulator does).
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_live_table_on_a_terminal_follows_a_resize(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    _set_size(slave, 40, 120)
    env = {**os.environ, "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "roadside.tools.cli", "demo", "--duration", "6", "--nodes", "1",
         "--speed", "20", "--run-dir", str(tmp_path / "d")],
        stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    out = b""
    resized_at: int | None = None
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:          # EIO: the demo closed its end
                    break
                if not chunk:
                    break
                out += chunk
            if resized_at is None and out.count(b"at gateway") >= 2:
                resized_at = len(out)    # the table is up: make the terminal narrower
                _set_size(master, 40, 50)
                os.killpg(proc.pid, signal.SIGWINCH)
            if proc.poll() is not None and not ready:
                break
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
    text = out.decode(errors="replace")
    assert code == 0, text[-3000:]
    assert resized_at is not None, text[-3000:]
    before = ANSI.sub("", out[:resized_at].decode(errors="replace"))
    after = ANSI.sub("", out[resized_at:].decode(errors="replace"))
    wide = [line for line in before.splitlines() if "wl-0001" in line]
    assert wide and "at gateway" in before and "delivered" in before
    # the frames drawn after the resize fit 50 columns (rich lays the table out again); the
    # first of them may still be one rich had begun before SIGWINCH arrived, so the last
    # frame is the one that counts
    rows = [line for line in after.split("summary:")[0].splitlines() if "wl-0001" in line]
    assert rows and len(rows[-1].rstrip()) <= 50, rows
    assert "\x1b[?25l" in text and "\x1b[?25h" in text   # cursor hidden while live, shown after
    assert "RESULT: every record arrived exactly once, in order" in text
