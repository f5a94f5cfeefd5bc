"""What the status page charts: per node, a bounded in-memory history of its recent records.

Filled by the SessionManager after it has ACKed a RECORDS (session.py `on_records`), so the
hot path only pays a short loop over the records just stored; served as GET /history.
Nothing here is durable: the queue holds the records, this holds what a chart needs, and a
restarted gateway starts its charts empty.

Per role (docs/GATEWAY.md "Status page"):
- water: levels (t, level_cm) and alarm changes (t, state, level_cm), with the node's
  alert / alarm / critical thresholds;
- signal: the recent phase changes (at_ms, phase, state) and faults, on the monitor's clock;
- toll: transactions per minute and reader state changes;
- rain: rainfall per interval (t, mm, mm_per_h, interval_s) and intensity alarms, with the
  heavy threshold.

Time is the record's `t` (node clock, epoch s) when its clock is synced, else the gateway's
clock when the record arrived. The window is the last WINDOW_S before the node's newest
record (not the gateway's clock: a node whose clock is off still shows its last hour), and
each series keeps at most MAX_POINTS (an hour at one level every 5 s), so memory per node is
bounded whatever a node sends.

Thresholds: HELLO does not carry them, so the gateway learns them from the replies to
`config.get` / `config.set` it relays (`roadside gateway cmd NODE config.get`); until then
the firmware defaults are shown and labelled as such (`thresholds_from`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import protocol as p

WINDOW_S = 3600
MAX_POINTS = 720            # per series: an hour at one point every 5 s
MAX_EVENTS = 100            # alarm / fault / reader changes kept per node
PHASE_EVENTS = 240          # signal phase changes: ~20 cycles of a 4-phase plan
TOLL_MINUTES = WINDOW_S // 60

# The firmware defaults (firmware/roadside_node/roles/water_keys.py and rain_keys.py), shown
# until the node's own values are known.
DEFAULTS: dict[str, dict[str, float]] = {
    "water": {"alert_cm": 100.0, "alarm_cm": 150.0, "critical_cm": 200.0,
              "hysteresis_cm": 10.0},
    "rain": {"heavy_mm_h": 50.0, "hyst_mm_h": 10.0},
}
# config key (as config.get / config.set name it) -> (role, threshold name)
_KEYS: dict[str, tuple[str, str]] = {
    **{f"thresholds.{k}": ("water", k) for k in DEFAULTS["water"]},
    **{k: ("water", k) for k in DEFAULTS["water"]},          # the firmware's aliases
    **{f"rain.{k}": ("rain", k) for k in DEFAULTS["rain"]},
}
DEFAULT_SOURCE = "firmware defaults (not read from the node)"


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _text(v: Any) -> str | None:
    return v[:32] if isinstance(v, str) else None


@dataclass
class NodeHistory:
    node: str
    role: str
    last_seq: int = 0
    newest: float = 0.0                     # the newest record time seen (the window's end)
    oldest: float = math.inf                # the oldest (toll minutes are shown from here)
    series: deque[tuple[float, float]] = field(
        default_factory=lambda: deque(maxlen=MAX_POINTS))       # water levels
    rain: deque[tuple[float, float, float, float]] = field(
        default_factory=lambda: deque(maxlen=MAX_POINTS))       # t, mm, mm_per_h, interval_s
    events: deque[tuple[Any, ...]] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    phases: deque[tuple[int, int, str]] = field(
        default_factory=lambda: deque(maxlen=PHASE_EVENTS))     # at_ms, phase, state
    minutes: dict[int, int] = field(default_factory=dict)      # toll: minute start -> count
    thresholds: dict[str, float] = field(default_factory=dict)
    thresholds_from: str = DEFAULT_SOURCE
    cached: dict[str, Any] | None = None    # document(), until something changes

    def __post_init__(self) -> None:
        self.thresholds = dict(DEFAULTS.get(self.role, {}))

    def extend(self, records: Iterable[p.Record], now: float) -> None:
        """Records just stored (one message), in one pass: a resent one (seq not above the
        last) is skipped; water levels, most of what nodes send, are taken inline."""
        last, newest, oldest = self.last_seq, self.newest, self.oldest
        series = self.series
        for r in records:
            if r.seq <= last:
                continue
            last = r.seq
            t = now if r.flags & p.FLAG_CLOCK_UNSYNCED else float(r.t)
            if t > newest:
                newest = t
            if t < oldest:
                oldest = t
            if r.kind == p.KIND_LEVEL:
                level = _number(r.body.get(1))
                if level is not None:
                    series.append((t, level))
            else:
                self.add(r, t)
        if last != self.last_seq:
            self.cached = None
            self.last_seq, self.newest, self.oldest = last, newest, oldest

    def add(self, r: p.Record, t: float) -> None:
        """One record other than a water level, at time `t` (extend)."""
        b = r.body
        if r.kind == p.KIND_ALARM:
            self.events.append((t, _text(b.get(1)), _number(b.get(2))))
        elif r.kind == p.KIND_PHASE:
            at, phase, state = b.get(5), b.get(1), _text(b.get(2))
            if isinstance(at, int) and isinstance(phase, int) and state is not None:
                if self.phases and at < self.phases[-1][0]:
                    self.phases.clear()         # the monitor rebooted: a new clock
                self.phases.append((at, phase, state))
        elif r.kind == p.KIND_FAULT:
            self.events.append((t, _text(b.get(1)), b.get(2) if isinstance(b.get(2), int)
                                else None, b.get(6) if isinstance(b.get(6), int) else None))
        elif r.kind == p.KIND_TRANSACTION:
            minute = int(t // 60) * 60
            self.minutes[minute] = self.minutes.get(minute, 0) + 1
        elif r.kind == p.KIND_READER:
            self.events.append((t, _text(b.get(1)), _text(b.get(5))))
        elif r.kind == p.KIND_RAINFALL:
            mm, rate, iv = _number(b.get(2)), _number(b.get(4)), _number(b.get(3))
            if mm is not None and rate is not None:
                self.rain.append((t, mm, rate, iv or 0.0))
        elif r.kind == p.KIND_INTENSITY:
            self.events.append((t, _text(b.get(1)), _number(b.get(2))))

    def prune(self) -> None:
        start = self.newest - WINDOW_S
        for q in (self.series, self.rain, self.events):
            while q and q[0][0] < start:
                q.popleft()
        for m in [m for m in self.minutes if m + 60 <= start]:
            del self.minutes[m]
        while len(self.minutes) > TOLL_MINUTES:
            del self.minutes[min(self.minutes)]

    def document(self) -> dict[str, Any]:
        if self.cached is not None:
            return self.cached
        doc: dict[str, Any] = {"id": self.node, "role": self.role, "newest": self.newest}
        if self.role == "water":
            doc["levels"] = [list(x) for x in self.series]
            doc["alarms"] = [{"t": t, "state": s, "level_cm": v} for t, s, v in self.events]
        elif self.role == "signal":
            doc["phases"] = [list(x) for x in self.phases]
            doc["faults"] = [{"t": e[0], "fault": e[1], "phase": e[2], "at_ms": e[3]}
                             for e in self.events]
        elif self.role == "toll":
            doc["per_minute"] = self._per_minute()
            doc["reader"] = [{"t": t, "state": s, "detail": d} for t, s, d in self.events]
        elif self.role == "rain":
            doc["rainfall"] = [list(x) for x in self.rain]
            doc["intensity"] = [{"t": t, "state": s, "mm_per_h": v}
                                for t, s, v in self.events]
        if self.role in DEFAULTS:
            doc["thresholds"] = dict(self.thresholds)
            doc["thresholds_from"] = self.thresholds_from
        self.cached = doc
        return doc

    def _per_minute(self) -> list[list[int]]:
        """[minute start, transactions] for every minute of the last hour (or since the first
        record), quiet minutes included: a chart with a gap would hide a quiet lane."""
        if not self.minutes:
            return []
        last = int(self.newest // 60) * 60
        first = max(int(self.oldest // 60) * 60, last - (TOLL_MINUTES - 1) * 60)
        return [[m, self.minutes.get(m, 0)] for m in range(first, last + 60, 60)]


class History:
    """Every node's NodeHistory; at most one per node the SessionManager knows."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeHistory] = {}

    def _node(self, node: str, role: str) -> NodeHistory:
        h = self.nodes.get(node)
        if h is None or h.role != role:
            h = self.nodes[node] = NodeHistory(node, role)
        return h

    def add(self, node: str, role: str, records: Iterable[p.Record], now: float) -> None:
        """Records just stored for `node` (a resent one, seq not above the last, is skipped)."""
        h = self._node(node, role)
        h.extend(records, now)
        h.prune()

    def learn_config(self, node: str, role: str, name: str, args: dict[str, Any] | None,
                     result: Any, when: str) -> bool:
        """A node's ok REPLY to config.get / config.set: take the thresholds it names.
        Returns whether any threshold was learned."""
        if name not in ("config.get", "config.set") or role not in DEFAULTS:
            return False
        key = (args or {}).get("key")
        values: dict[str, Any] = {}
        if name == "config.set" or (name == "config.get" and isinstance(key, str)):
            if isinstance(key, str):
                values[key] = result
        elif isinstance(result, dict):                  # the whole config, nested
            for section in ("thresholds", "rain"):
                sub = result.get(section)
                if isinstance(sub, dict):
                    values.update({f"{section}.{k}": v for k, v in sub.items()})
        if isinstance(key, str) and isinstance(result, dict) and key in ("thresholds", "rain"):
            values = {f"{key}.{k}": v for k, v in result.items()}
        h = self._node(node, role)
        learned = False
        for k, v in values.items():
            target = _KEYS.get(k)
            number = _number(v)
            if target is not None and target[0] == role and number is not None:
                h.thresholds[target[1]] = number
                learned = True
        if learned:
            h.cached = None
            h.thresholds_from = f"node config ({name}, {when})"
        return learned

    def document(self) -> dict[str, Any]:
        return {"window_s": WINDOW_S, "max_points": MAX_POINTS,
                "nodes": [self.nodes[n].document() for n in sorted(self.nodes)]}
