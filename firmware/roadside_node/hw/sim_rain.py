# Simulated tipping bucket for the rain gauge (roles/rain.py): the scenario gives the rain
# intensity over role time, [t_s, mm_per_h] points each holding until the next (repeated every
# loop_s when set); the bucket tips each time the rain since t = 0 crosses a multiple of
# rain.tip_mm. Like the board's counter it counts from boot; in deep sleep it is the wake pin
# (next_at: when the next tip comes) and the tip that woke the node is counted once.


class IO:
    def __init__(self, hw, config):
        self.hw = hw
        d = hw.scenario()
        self.tip = config.get("rain.tip_mm")
        self.pts = [(float(t), float(r)) for t, r in d.get("points") or [[0, 0]]]
        self.period = float(d.get("loop_s", 0))
        # counting starts when the board woke (the pin interrupt is armed at once on a board)
        self.seen = self._count(hw.boot_s())
        self.extra = 1 if hw.woke_by_pin() else 0  # the tip that ended the deep sleep
        hw.wake_pin(self, 0)

    def _mm(self, t):
        """Rain (mm) from role time 0 to t."""
        laps = 0.0
        if self.period > 0:
            n = t // self.period
            t -= n * self.period
            laps = n * self._lap(self.period)
        return laps + self._lap(t)

    def _lap(self, t):
        pts = self.pts
        total = 0.0
        for i in range(len(pts)):
            t0, rate = pts[i]
            if t <= t0:
                break
            t1 = pts[i + 1][0] if i + 1 < len(pts) else t
            total += rate * (min(t, t1) - t0) / 3600
        return total

    def _count(self, t):
        return int(self._mm(t) / self.tip + 1e-9)

    def tips(self):
        n = self._count(self.hw.sim_s())
        out = n - self.seen + self.extra
        self.seen = n
        self.extra = 0
        return out

    def next_at(self, t, horizon=86400.0):
        """Role time of the next tip after t (the wake pin's edge), None within a day."""
        target = (self._count(t) + 1) * self.tip
        lo, hi = t, t + horizon
        if self._mm(hi) < target:
            return None
        while hi - lo > 0.001:
            mid = (lo + hi) / 2
            if self._mm(mid) >= target:
                hi = mid
            else:
                lo = mid
        return hi + 0.001
