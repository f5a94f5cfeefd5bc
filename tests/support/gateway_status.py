"""A gateway's /status document in tests, and the wait for a serial link to be open before a
test's fake node writes its first frame to the link's pty.

Why the wait: pyserial flushes the input buffer when it opens a port (serialposix
Serial.open calls _reset_input_buffer), so whatever a fake node writes to its pty before the
gateway has opened it is lost. A real node resends its HELLO after its ACK timeout; the tests'
FakeNode (tests/gateway/conftest.py) sends it once, and the test would then time out waiting
for the ACK. The gateway reports a serial link "open" only once pyserial's open has returned
(gateway/links/serial.py sets OPEN after create_serial_connection, which opens the port), so a
frame written after that is read.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any


def status(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET the /status document at `url` (blocking)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
        return doc


async def link_open(status_url: str, port: str, timeout: float = 15.0) -> dict[str, Any]:
    """Return the /status document at `status_url` once the gateway's link for `port` (the
    port as in gateway.toml) is "open"; AssertionError with the last state seen after
    `timeout` seconds. The document is fetched every 20 ms in a thread, so this works for a
    daemon in a subprocess and for daemon.main in the caller's own event loop alike; a status
    server not listening yet counts as not open."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        remaining = deadline - time.monotonic()
        try:
            doc = await asyncio.to_thread(status, status_url, max(0.1, min(5.0, remaining)))
        except (OSError, ValueError) as exc:     # URLError is an OSError; bad JSON a ValueError
            last = f"GET {status_url} failed: {exc}"
        else:
            links = doc.get("links", [])
            states = [lk.get("state") for lk in links if lk.get("port") == port]
            if states == ["open"]:
                return doc
            last = (f"state {states[0]!r}" if states else
                    f"no link for it; links: {[(lk.get('port'), lk.get('state')) for lk in links]}")
        if time.monotonic() >= deadline:
            raise AssertionError(f"link {port} not open within {timeout} s: {last}")
        await asyncio.sleep(0.02)
