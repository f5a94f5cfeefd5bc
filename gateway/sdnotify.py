"""systemd's notify protocol (sd_notify(3)), with the standard library only.

Under `Type=notify` systemd passes NOTIFY_SOCKET (a path, or `@name` for an abstract socket)
and, with `WatchdogSec=`, WATCHDOG_USEC (and WATCHDOG_PID). The daemon sends one datagram per
state change: `READY=1` once it serves, `WATCHDOG=1` at half the watchdog interval while its
loop runs, `RELOADING=1` + `MONOTONIC_USEC=` on SIGHUP then `READY=1` again, `STOPPING=1` on
the way out, and `STATUS=` lines that `systemctl status` shows. Without NOTIFY_SOCKET every
call does nothing, so the daemon runs the same by hand.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("roadside.gateway")


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if addr.startswith("@"):
            self.address = "\0" + addr[1:]      # Linux abstract namespace
        elif addr.startswith("/"):
            self.address = addr
        self.watchdog_s: float | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """One datagram of `KEY=value` lines; False (and one debug line) if it cannot go."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as exc:
            log.debug(f"systemd notify to {self.address!r} failed: {exc}")
            return False

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
