"""Run the `roadside` command line as a user does, in its own process, from async tests."""

from __future__ import annotations

import asyncio
import sys

ROADSIDE = [sys.executable, "-c", "import sys; from roadside.tools.cli import main;"
                                  " sys.exit(main())"]


async def roadside(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `roadside ARGS`; killed after `timeout` seconds."""
    proc = await asyncio.create_subprocess_exec(*ROADSIDE, *args,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
