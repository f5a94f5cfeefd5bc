# Rain gauge (tipping bucket) for the drainage network: every tip of the bucket is rain.tip_mm
# of rain. The tips are counted by the hardware (hw/esp32_rain.py: a pin interrupt while awake,
# the pin waking the board from deep sleep; hw/sim_rain.py: the storm scenario). Every
# rain.interval_s the node records the rainfall of the interval (tips, mm, mm/h); the intensity
# (mm/h) above rain.heavy_mm_h raises an intensity alarm at once, cleared when an interval's
# intensity falls below heavy_mm_h - hyst_mm_h. Battery mode (battery.py) keeps the counts,
# the interval and the alarm state in RTC memory across deep sleep: save() / restore().
from micropython import const

from .. import proto

_K_RAINFALL = const(30)  # body: 1 tips, 2 mm, 3 interval_s, 4 mm_per_h, 5 total_tips
_K_INTENSITY = const(31)  # body: 1 state, 2 mm_per_h, 3 previous
STATES = ("normal", "heavy")


class RainRole:
    name = "rain"

    def __init__(self, config, emit, io=None, journal=None):
        self.config = config
        self.emit = emit  # emit(kind, flags, body) -> seq (0 when refused)
        self.io = io  # tips() -> bucket tips since the last call
        self.tips = 0  # tips in the interval now running
        self.total = 0  # tips since the counter started (kept across deep sleep)
        self.start = None  # role time the running interval began
        self.next_sample = 0.0  # when it ends
        self.state = 0
        self.rate = 0.0  # mm/h of the last whole interval

    def describe(self, kind, body):
        """The log line of a record this role emitted (App.emit), None for the default."""
        if kind == _K_RAINFALL:
            return "rain %d tips %.2fmm %.1fmm/h" % (body[1], body[2], body[4])
        if kind == _K_INTENSITY:
            return "intensity %s (was %s) %.1fmm/h" % (body[1], body[3], body[2])
        return None

    def count(self, n):
        """n more tips (the hardware's count, or a test's)."""
        self.tips += n
        self.total += n

    def step(self, t):
        if self.io is not None:
            self.count(self.io.tips())
        g = self.config.get
        iv = g("rain.interval_s")
        if self.start is None:
            self.start = t
            self.next_sample = t + iv
        if t >= self.next_sample:
            self.close(t)
        elif not self.state:
            # heavy already: this interval's tips so far, spread over the whole interval
            rate = round(self.tips * g("rain.tip_mm") * 3600 / iv, 1)
            if rate >= g("rain.heavy_mm_h"):
                self._alarm(1, rate)

    def sample(self, t):
        """Battery mode: one wake's turn (tips count themselves); never short of a reading."""
        self.step(t)
        return True

    def close(self, t):
        """End the running interval at t: its rainfall record, then the intensity state."""
        g = self.config.get
        n = self.tips
        secs = max(1, int(t - self.start + 0.5))
        mm = n * g("rain.tip_mm")
        self.rate = rate = round(mm * 3600 / secs, 1)
        self.emit(_K_RAINFALL, 0, {1: n, 2: round(mm, 2), 3: secs, 4: rate, 5: self.total})
        self.tips = 0
        self.start = t
        self.next_sample = t + g("rain.interval_s")
        heavy = g("rain.heavy_mm_h")
        if rate >= heavy:
            self._alarm(1, rate)
        elif rate < heavy - g("rain.hyst_mm_h"):
            self._alarm(0, rate)

    def _alarm(self, new, rate):
        if new != self.state:
            prev = self.state
            self.state = new
            self.emit(_K_INTENSITY, proto.F_PRIORITY, {1: STATES[new], 2: rate,
                                                      3: STATES[prev]})

    # -- deep sleep (battery.py) ----------------------------------------------------------
    def save(self):
        """What must survive a deep sleep (RTC memory, JSON): the tips counted while awake
        are taken first, so none is lost between the last step and the sleep."""
        if self.io is not None:
            self.count(self.io.tips())
        return {"n": self.tips, "T": self.total, "s": self.start, "ns": self.next_sample,
                "st": self.state, "r": self.rate}

    def restore(self, d):
        self.tips += int(d.get("n") or 0)  # += : a wake tip may be counted already
        self.total += int(d.get("T") or 0)
        self.start = d.get("s")
        self.next_sample = float(d.get("ns") or 0)
        self.state = int(d.get("st") or 0)
        self.rate = float(d.get("r") or 0)


Role = RainRole  # what App.make_role takes from roles/<name>.py
