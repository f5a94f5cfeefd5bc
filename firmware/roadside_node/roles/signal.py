# Signal monitor (what a conflict monitor / MMU does): red/amber/green inputs per phase,
# debounced; checks for conflicting greens, dark or dual-lit heads, minimum green, amber and
# all-red clearance. A violation is a fault record flagged PRIORITY (the alarm) at once,
# latched until `fault.clear`. Phase changes go out as SPaT-like records, loop detector
# counts per approach every count_interval_s, and `plan.select` passes a timing plan to the
# controller, refused during clearance or while a fault is latched.
#
# hw: signal_samples() -> [(t_ms, heads)] (heads[i] = bits of phase i+1: 1 red, 2 amber,
# 4 green; t_ms on the role clock), loop_counts() -> [vehicles per detector since last call],
# plan_select(plan), fault_output(active).
from micropython import const

from .. import proto

R = const(1)
A = const(2)
G = const(4)
_PERMISSIVE = const(6)  # green or amber: the phase lets traffic go
_UNKNOWN = const(255)

# record kinds and body keys (PROTOCOL.md 2.1)
_K_PHASE = const(10)
_K_FAULT = const(11)
_K_COUNTS = const(12)
_K_PLAN = const(13)
_PH_PHASE = const(1)
_PH_STATE = const(2)
_PH_PREVIOUS = const(3)
_PH_DURATION = const(4)
_PH_AT = const(5)
_F_FAULT = const(1)
_F_PHASE = const(2)
_F_OTHER = const(3)
_F_MEASURED = const(4)
_F_LIMIT = const(5)
_F_AT = const(6)
_F_LATENCY = const(7)
_C_APPROACH = const(1)
_C_VEHICLES = const(2)
_C_INTERVAL = const(3)
_P_PLAN = const(1)
_P_PREVIOUS = const(2)


def state_name(bits):
    if bits == _UNKNOWN:
        return "unknown"
    if bits & G:
        return "dual" if bits & R else "green"
    if bits & A:
        return "amber"
    if bits & R:
        return "red"
    return "dark"


def all_pairs(n):
    return [[a, b] for a in range(1, n + 1) for b in range(a + 1, n + 1)]


class SignalRole:
    name = "signal"
    commands = ("plan.select", "fault.clear", "signal.status")

    def __init__(self, config, emit, hw=None, journal=None):
        self.config = config
        self.emit = emit
        self.hw = hw
        n = config.get("phases")
        self.n = n
        pairs = config.get("conflicts") or all_pairs(n)
        self.conflicts: list = [[] for _ in range(n)]  # phase index -> conflicting phase indexes
        for a, b in pairs:
            if a <= n and b <= n:
                self.conflicts[a - 1].append(b - 1)
                self.conflicts[b - 1].append(a - 1)
        self.raw = bytearray([_UNKNOWN] * n)
        self.raw_at = [0] * n  # when raw last changed (the edge)
        self.stable = bytearray([_UNKNOWN] * n)
        self.since = [-1] * n  # edge time of the stable state (-1: not seen start)
        self.red_at = [-1] * n  # when the phase last turned red after green/amber
        self.fault = None  # (kind, phase, other) while latched
        self.suppressed = 0  # violations seen while latched
        self.faults = 0
        self.plan = 0
        self.counts = None
        self.count_start = None
        self.now = 0

    # -- main loop -------------------------------------------------------------------------
    def step(self, t, _read=None):
        hw = self.hw
        for t_ms, heads in hw.signal_samples():
            self.sample(t_ms, heads)
        self.count(t, hw.loop_counts())

    def count(self, t, counts):
        """Add loop detector counts; emit one record per approach every count_interval_s."""
        if self.counts is None or len(self.counts) != len(counts):
            self.counts = [0] * len(counts)
            self.count_start = t
        c = self.counts
        for i in range(len(counts)):
            c[i] += counts[i]
        interval = self.config.get("count_interval_s")
        if t - self.count_start >= interval:
            self.count_start += interval
            for i in range(len(c)):
                self.emit(_K_COUNTS, 0, {_C_APPROACH: i + 1, _C_VEHICLES: c[i],
                                             _C_INTERVAL: interval})
                c[i] = 0

    def sample(self, t_ms, heads):
        """One reading of every head at t_ms: debounce, then check what changed."""
        self.now = t_ms
        raw = self.raw
        for i in range(self.n):
            b = heads[i] & 7
            if b != raw[i]:
                raw[i] = b
                self.raw_at[i] = t_ms
        changed = []
        stable = self.stable
        debounce = self.config.get("debounce_ms")  # read live: config.set applies at once
        for i in range(self.n):
            if raw[i] != stable[i] and t_ms - self.raw_at[i] >= debounce:
                changed.append(i)
        if not changed:
            return
        # apply every change first, so that two heads switching together are judged together
        prevs = []
        for i in changed:
            prev = stable[i]
            stable[i] = raw[i]
            edge = self.raw_at[i]
            known = prev != _UNKNOWN
            dur = edge - self.since[i] if known and self.since[i] >= 0 else -1
            self.since[i] = edge if known else -1
            if known and raw[i] == R and prev & _PERMISSIVE:
                self.red_at[i] = edge
            prevs.append((prev, dur))
            self.emit(_K_PHASE, 0, {_PH_PHASE: i + 1, _PH_STATE: state_name(raw[i]),
                                         _PH_PREVIOUS: state_name(prev),
                                         _PH_DURATION: dur if dur > 0 else 0, _PH_AT: edge})
        for k in range(len(changed)):
            prev, dur = prevs[k]
            self._check(changed[k], prev, dur, t_ms)

    def _check(self, i, prev, dur, t_ms):
        s = self.stable[i]
        edge = self.raw_at[i]
        if s == 0:
            return self._violation("dark", i, -1, 0, 0, edge, t_ms)
        if s & G and s & R:
            return self._violation("dual", i, -1, 0, 0, edge, t_ms)
        if s & _PERMISSIVE:
            for j in self.conflicts[i]:
                o = self.stable[j]
                if o != _UNKNOWN and o & _PERMISSIVE:
                    return self._violation("conflict", min(i, j), max(i, j), 0, 0, edge, t_ms)
        if prev == _UNKNOWN:
            return
        if prev & G:
            if s & A:
                lim = self.config.get("min_green_ms")
                if 0 <= dur < lim:
                    return self._violation("min_green", i, -1, dur, lim, edge, t_ms)
            elif s == R:  # green straight to red: no amber at all
                return self._violation("amber", i, -1, 0, self.config.get("amber_ms"), edge,
                                       t_ms)
        elif prev & A and s == R:
            lim = self.config.get("amber_ms")
            if 0 <= dur < lim:
                return self._violation("amber", i, -1, dur, lim, edge, t_ms)
        if s & G and not prev & G:
            lim = self.config.get("all_red_ms")
            for j in self.conflicts[i]:
                r = self.red_at[j]
                if r >= 0 and 0 <= edge - r < lim:
                    return self._violation("all_red", i, j, edge - r, lim, edge, t_ms)

    def _violation(self, kind, i, j, measured, limit, edge, t_ms):
        self.faults += 1
        if self.fault is not None:
            self.suppressed += 1
            return
        self.fault = (kind, i + 1, j + 1)
        out = getattr(self.hw, "fault_output", None)
        if out is not None:
            out(True)
        self.emit(_K_FAULT, proto.F_PRIORITY, {
            _F_FAULT: kind, _F_PHASE: i + 1, _F_OTHER: j + 1, _F_MEASURED: measured,
            _F_LIMIT: limit, _F_AT: edge, _F_LATENCY: t_ms - edge})

    # -- state -----------------------------------------------------------------------------
    def clearance(self):
        """Why a plan change must wait now (text), or None."""
        st = self.stable
        green = False
        for i in range(self.n):
            if st[i] == _UNKNOWN:
                return "signal heads not read yet"
            if st[i] & A:
                return "clearance in progress (amber on phase %d)" % (i + 1)
            if st[i] & G:
                green = True
        if not green:
            return "clearance in progress (all red)"
        return None

    def present_fault(self):
        """A condition that is still there (dark, dual, conflict), as text, or None."""
        st = self.stable
        for i in range(self.n):
            s = st[i]
            if s == _UNKNOWN:
                continue
            if s == 0 or (s & G and s & R):
                return "phase %d is %s" % (i + 1, state_name(s))
            if s & _PERMISSIVE:
                for j in self.conflicts[i]:
                    if st[j] != _UNKNOWN and st[j] & _PERMISSIVE:
                        return "phases %d and %d both %s/%s" % (
                            i + 1, j + 1, state_name(s), state_name(st[j]))
        return None

    # -- commands --------------------------------------------------------------------------
    def command(self, name, args):
        if name == "plan.select":
            plan = args.get("plan")
            top = self.config.get("plans")
            if type(plan) is not int or not 1 <= plan <= top:
                raise proto.CommandError("plan.select: plan must be an integer 1 to %d, got %r"
                                   % (top, plan))
            if self.fault is not None:
                raise proto.CommandError("plan.select: refused: fault %s on phase %d is latched "
                                   "(fault.clear first)" % (self.fault[0], self.fault[1]))
            why = self.clearance()
            if why:
                raise proto.CommandError("plan.select: refused: " + why)
            prev = self.plan
            self.hw.plan_select(plan)
            self.plan = plan
            self.emit(_K_PLAN, 0, {_P_PLAN: plan, _P_PREVIOUS: prev})
            return {"plan": plan, "previous": prev}
        if name == "fault.clear":
            if self.fault is None:
                return {"cleared": None}
            still = self.present_fault()
            if still:
                raise proto.CommandError("fault.clear: refused: %s" % still)
            kind, ph, other = self.fault
            self.fault = None
            n = self.suppressed
            self.suppressed = 0
            out = getattr(self.hw, "fault_output", None)
            if out is not None:
                out(False)
            self.emit(_K_FAULT, proto.F_PRIORITY, {_F_FAULT: "cleared", _F_PHASE: ph,
                                                       _F_OTHER: other, _F_AT: self.now})
            return {"cleared": kind, "phase": ph, "suppressed": n}
        # signal.status
        f = self.fault
        return {"phases": [state_name(b) for b in self.stable], "plan": self.plan,
                "fault": None if f is None else "%s phase %d" % (f[0], f[1]),
                "faults": self.faults}


Role = SignalRole  # what App.make_role takes from roles/<name>.py
