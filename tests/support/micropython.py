"""Run code under the real MicroPython unix port, the interpreter the firmware runs on.

Every firmware test goes through here, so the firmware is always exercised by MicroPython
itself and never by CPython pretending to be it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIRMWARE = REPO / "firmware"
MICROPYTHON = Path(sys.executable).parent / "micropython"

# An ESP32 without PSRAM leaves roughly 96 KiB to Python; on this 64-bit interpreter the same
# program needs 22 KiB more (tools/sim/launcher.py BITS64_HEAP): the board's heap, in this
# twin's terms.
ESP32_HEAP = "118k"


class MicroPythonError(AssertionError):
    """The MicroPython process failed; carries its output so the test report shows why."""


def run(
    code: str,
    *,
    cwd: str | Path | None = None,
    heapsize: str = ESP32_HEAP,
    timeout: float = 60,
    stdin: bytes | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run `code` (a script) under micropython with `firmware/` on sys.path.

    Raises MicroPythonError (with stdout and stderr) when it exits non-zero and `check` is set.
    """
    prelude = f"import sys\nsys.path.insert(0, {str(FIRMWARE)!r})\n"
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(prelude + code)
        script = f.name
    try:
        proc = subprocess.run(
            [str(MICROPYTHON), "-X", f"heapsize={heapsize}", script],
            cwd=cwd,
            input=stdin,
            capture_output=True,
            timeout=timeout,
        )
    finally:
        Path(script).unlink(missing_ok=True)
    if check and proc.returncode != 0:
        raise MicroPythonError(
            f"micropython exited {proc.returncode}\n--- stdout\n"
            f"{proc.stdout.decode(errors='replace')}\n--- stderr\n"
            f"{proc.stderr.decode(errors='replace')}"
        )
    return proc


def run_stdout(code: str, **kwargs) -> str:
    """Run `code` and return what it printed."""
    return run(code, **kwargs).stdout.decode()
