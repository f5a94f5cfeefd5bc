"""GET /healthz: 200 `ok` when the links and uplinks are healthy, else 503 with one JSON line.

Unhealthy when, for longer than its grace period, a link is not open (`link_down_s`) or an
uplink cannot reach its backend (`uplink_down_s`); and at once while the queue applies
backpressure. The 503 body is one line, e.g.

    {"status": "unhealthy", "reason": "uplink http down for 312 s: cannot reach ...",
     "problems": ["uplink http down for 312 s: ..."]}

A sampler task (started with the status server) looks every second, so "down for N s" is
counted from when the problem began, not from the first poll of /healthz.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .metrics import backpressure

SAMPLE_S = 1.0


class Health:
    def __init__(self, links: list[Any], uplinks: list[Any], queue: Any,
                 link_down_s: float = 60.0, uplink_down_s: float = 300.0,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.links = links
        self.uplinks = uplinks
        self.queue = queue
        self.link_down_s = link_down_s
        self.uplink_down_s = uplink_down_s
        self.mono = mono
        self._bad_since: dict[str, float] = {}

    def _since(self, key: str, bad: bool, now: float) -> float:
        """Seconds `key` has been bad (0 when it is fine now)."""
        if not bad:
            self._bad_since.pop(key, None)
            return 0.0
        return now - self._bad_since.setdefault(key, now)

    def problems(self) -> list[str]:
        """What is wrong now (empty when healthy); also advances the down-since clocks."""
        now = self.mono()
        out = []
        for link in self.links:
            down = self._since(f"link {link.name}", not link.is_open, now)
            if down and down >= self.link_down_s:
                why = f": {link.last_error}" if getattr(link, "last_error", None) else ""
                out.append(f"link {link.name} {link.state} for {down:.0f} s{why}")
        for u in self.uplinks:
            s = u.status()
            name = s.get("name", getattr(u, "name", "?"))
            down = self._since(f"uplink {name}", s.get("state") == "down", now)
            if down and down >= self.uplink_down_s:
                why = f": {s['last_error']}" if s.get("last_error") else ""
                out.append(f"uplink {name} down for {down:.0f} s{why}")
        if backpressure(self.queue):
            out.append("queue in backpressure: disk budget spent, nodes are told busy")
        return out

    def check(self) -> tuple[bool, dict[str, Any]]:
        problems = self.problems()
        if not problems:
            return True, {"status": "ok"}
        return False, {"status": "unhealthy", "reason": problems[0], "problems": problems}
