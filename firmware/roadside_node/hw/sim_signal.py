# Simulated intersection for the signal monitor: signal heads follow a scenario's cycle
# (steps of [duration_ms, "GRRR"], one letter per phase: R red, A amber, G green, D dark,
# X green+red), with overrides that force one phase's head for a while (a load switch
# fault), and loop detectors that count vehicles per approach at scripted rates (vehicles
# per hour, piecewise constant over simulated seconds). Times are role-clock ms.
_BITS = {"R": 1, "A": 2, "Y": 2, "G": 4, "D": 0, "X": 5}


def _heads(text):
    return bytes([_BITS[c] for c in text])


class SignalSim:
    def __init__(self, data, phases, debounce_ms=0):
        self.n = phases
        self.debounce = debounce_ms  # also sample this long after a change, like a monitor
        # that reads its inputs every few ms would
        cycle = data.get("cycle") or [[1000, "R" * phases]]
        self.steps = []
        at = 0
        for dur, text in cycle:
            self.steps.append((at, _heads(text)))
            at += int(dur)
        self.period = at
        self.loop = bool(data.get("loop", True))
        self.overrides = [(int(a), int(a) + int(d), int(p) - 1, _BITS[c])
                          for a, d, p, c in data.get("overrides", [])]
        traffic = data.get("traffic") or {}
        self.rates = [(float(t) * 1000, [float(v) for v in vph])
                      for t, vph in traffic.get("vph", [[0, [0] * phases]])]
        self.traffic_loop = float(traffic.get("loop_s", 0)) * 1000
        self.last = -1  # ms of the previous samples() call
        self.last_counts = None
        self.plans = []  # (t_ms, plan) as set through plan_select
        self.fault_out = []  # (t_ms, active)

    def heads_at(self, t):
        if self.loop and self.period:
            c = t % self.period
        else:
            c = min(t, self.period - 1)
        cur = self.steps[0][1]
        for start, heads in self.steps:
            if start <= c:
                cur = heads
            else:
                break
        out = None
        for a, b, p, bits in self.overrides:
            if a <= t < b:
                if out is None:
                    out = bytearray(cur)
                out[p] = bits
        return bytes(out) if out is not None else cur

    def _edges(self, t0, t1):
        """Times in (t0, t1] where a head may change (step starts, override ends)."""
        out = []
        if self.period:
            k = t0 // self.period if self.loop else 0
            while True:
                base = k * self.period
                if base > t1:
                    break
                for start, _ in self.steps:
                    if t0 < base + start <= t1:
                        out.append(base + start)
                if not self.loop:
                    break
                k += 1
        for a, b, _, _ in self.overrides:
            for e in (a, b):
                if t0 < e <= t1:
                    out.append(e)
        out.sort()
        return out

    def samples(self, now):
        """[(t_ms, heads)]: one sample at each change since the last call, and one now."""
        if self.last < 0:
            self.last = now
            return [(now, self.heads_at(now))]
        t0 = self.last
        self.last = now
        times = []
        for e in self._edges(t0 - self.debounce, now):
            if t0 < e < now:
                times.append(e)
            e += self.debounce
            if self.debounce and t0 < e < now:
                times.append(e)
        times.sort()
        out = [(e, self.heads_at(e)) for e in times]
        out.append((now, self.heads_at(now)))
        return out

    def _cum(self, t):
        """Vehicles per approach that have crossed the loops by t (ms), as floats."""
        if self.traffic_loop:
            laps = int(t // self.traffic_loop)
            t = t - laps * self.traffic_loop
        else:
            laps = 0
        rates = self.rates
        tot = [0.0] * len(rates[0][1])
        lap = [0.0] * len(tot)
        for k in range(len(rates)):
            start, vph = rates[k]
            end = rates[k + 1][0] if k + 1 < len(rates) else (self.traffic_loop or 1e18)
            for i in range(len(tot)):
                if laps:
                    lap[i] += vph[i] * max(0.0, end - start) / 3600000
                if t > start:
                    tot[i] += vph[i] * (min(t, end) - start) / 3600000
        return [tot[i] + laps * lap[i] for i in range(len(tot))]

    def loop_counts(self, now):
        cum = [int(c) for c in self._cum(now)]
        prev = self.last_counts or [0] * len(cum)
        self.last_counts = cum
        return [cum[i] - prev[i] for i in range(len(cum))]


class IO:
    """roles/signal.py's view of the intersection; hw is the base layer (hw/sim.py)."""

    def __init__(self, hw, config):
        self.hw = hw
        self.sim = SignalSim(hw.scenario(), config.get("phases"), config.get("debounce_ms"))

    def signal_samples(self):
        """[(t_ms, heads)] since the last call: every change the scenario made, and now."""
        return self.sim.samples(self.hw.role_ms())

    def loop_counts(self):
        return self.sim.loop_counts(self.hw.role_ms())

    def plan_select(self, plan):
        """The controller's plan select lines: what was set is kept, and logged to a file."""
        t = self.hw.role_ms()
        self.sim.plans.append((t, plan))
        with open(self.hw.host_path("plan_select.log"), "a") as f:
            f.write("%d %d\n" % (t, plan))

    def fault_output(self, active):
        self.sim.fault_out.append((self.hw.role_ms(), active))
