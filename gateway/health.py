"""GET /healthz: 200 `ok` when the links and uplinks are healthy, else 503 with one JSON line.

Unhealthy when, for longer than its grace period, a link is not open (`link_down_s`) or an
uplink cannot reach its backend (`uplink_down_s`); and at once while the queue cannot commit
(a full disk, another storage error), while it applies backpressure, within DEAD_LETTER_S of a
batch being dead-lettered (a backend refusing batches with a 4xx), and within DEAD_LETTER_S of
a start that recovered a damaged queue file. The 503 body is one line, e.g.

    {"status": "unhealthy", "reason": "uplink http down for 312 s: cannot reach ...",
     "problems": ["uplink http down for 312 s: ..."]}

A sampler task (started with the status server) looks every second, so "down for N s" is
counted from when the problem began, not from the first poll of /healthz.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from .metrics import backpressure

log = logging.getLogger("roadside.gateway.health")

SAMPLE_S = 1.0
# A dead-lettered batch (or a recovered queue file) keeps /healthz at 503 this long: a backend
# that refuses every batch is noticed even between two refusals.
DEAD_LETTER_S = 900.0


class Health:
    def __init__(self, links: list[Any], uplinks: list[Any], queue: Any,
                 link_down_s: float = 60.0, uplink_down_s: float = 300.0,
                 mono: Callable[[], float] = time.monotonic,
                 dead_letter_s: float = DEAD_LETTER_S) -> None:
        self.links = links
        self.uplinks = uplinks
        self.queue = queue
        self.link_down_s = link_down_s
        self.uplink_down_s = uplink_down_s
        self.dead_letter_s = dead_letter_s
        self.mono = mono
        self._bad_since: dict[str, float] = {}
        self._started = mono()
        self._dead_seen = self._dead_letters()
        self._dead_at: float | None = None      # when the last dead letter was seen
        self._dead_recent = 0                   # dead letters since that window began
        self._unhealthy: str | None = None      # the reason last logged

    def _dead_letters(self) -> int:
        counters = getattr(self.queue, "counters", None)
        return int(counters.get("dead_letters", 0)) if isinstance(counters, dict) else 0

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
        storage = getattr(self.queue, "storage", None)
        if storage is not None and storage.error is not None:
            what = "disk full" if storage.disk_full else "storage error"
            out.append(f"queue {what}: {storage.error}; nodes are told busy")
        elif backpressure(self.queue):
            out.append("queue in backpressure: disk budget spent, nodes are told busy")
        out.extend(self._dead_letter_problem(now))
        if storage is not None and storage.recovered and \
                now - self._started < self.dead_letter_s:
            r = storage.recovered[-1]
            out.append(f"queue file was damaged at start: moved aside to {r['aside']},"
                       f" {r['records']} readable records re-queued")
        self._log_change(out)
        return out

    def _dead_letter_problem(self, now: float) -> list[str]:
        dead = self._dead_letters()
        if dead > self._dead_seen:
            if self._dead_at is None or now - self._dead_at >= self.dead_letter_s:
                self._dead_recent = 0
            self._dead_recent += dead - self._dead_seen
            self._dead_at = now
        self._dead_seen = dead
        if self._dead_at is None or now - self._dead_at >= self.dead_letter_s:
            return []
        why = next((f" (uplink {u.status().get('name')}: {u.status().get('last_error')})"
                    for u in self.uplinks
                    if u.status().get("dead_letters") and u.status().get("last_error")), "")
        return [f"{self._dead_recent} batches dead-lettered, the last {now - self._dead_at:.0f}"
                f" s ago{why}: the backend refuses them; see `roadside gateway dead-letters`"]

    def _log_change(self, problems: list[str]) -> None:
        """One line when it turns unhealthy (or the main reason changes), one when healthy."""
        reason = problems[0] if problems else None
        if reason is None and self._unhealthy is not None:
            log.warning(f"healthy again (was: {self._unhealthy})")
        elif reason is not None and (self._unhealthy is None
                                     or _kind(reason) != _kind(self._unhealthy)):
            log.warning(f"unhealthy: {reason}")
        self._unhealthy = reason

    def check(self) -> tuple[bool, dict[str, Any]]:
        problems = self.problems()
        if not problems:
            return True, {"status": "ok"}
        return False, {"status": "unhealthy", "reason": problems[0], "problems": problems}


def _kind(reason: str) -> str:
    """A reason without its counts and times ("down for 312 s" and "313 s" are one)."""
    return re.sub(r"\d+", "N", reason.split(":")[0])
