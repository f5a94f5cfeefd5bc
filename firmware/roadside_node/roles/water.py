# Water level: median of the last 5 samples with outlier rejection, level above the datum,
# rate of rise, thresholds with hysteresis -> alarm records on every state change, level
# records every fast_interval_s while rising or at/above alert, calm_interval_s while calm
# (normal and |rate| below calm_cm_per_min), report_interval_s otherwise.
# Sensors (config sensor.type): ultrasonic_uart / ultrasonic_pulse read the distance from the
# sensor face down to the water (level = datum_mm - distance); pressure_adc reads a raw ADC
# value, turned into the depth above the sensor with the zero/span calibration (level = depth
# + sensor.offset_mm). The filter works on those mm either way.
# Battery mode (battery.py) keeps the filter window and the alarm state in RTC memory across
# deep sleep: save() / restore().
from micropython import const

from .. import proto

STATES = ("normal", "alert", "alarm", "critical")
_MEDIAN_N = const(5)
_RATE_N = const(8)  # filtered levels the rate of rise is taken over
_MAX_REJECTS = const(3)  # this many rejected in a row: the water really moved, accept
_K_LEVEL = const(1)  # record kinds and body keys (PROTOCOL.md 2.1)
_K_ALARM = const(2)
_B_LEVEL_CM = const(1)
_B_RATE = const(2)
_B_DISTANCE_MM = const(3)
_B_STATE = const(1)
_B_ALARM_LEVEL = const(2)
_B_PREVIOUS = const(3)


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2]


def pressure_mm(raw, zero, span_raw, span_mm):
    """Depth of water above a pressure transducer (mm) from its ADC reading (read_u16)."""
    return (raw - zero) * span_mm // (span_raw - zero)


class WaterRole:
    name = "water"

    def __init__(self, config, emit, hw=None, journal=None):
        self.config = config
        self.emit = emit  # emit(kind, flags, body) -> seq (0 when refused)
        self.pressure = config.get("sensor.type") == "pressure_adc"
        self.read = None  # the sensor read of the hw layer (None: step() is given one)
        if hw is not None:
            self.read = hw.pressure_raw if self.pressure else hw.distance_mm
        self.samples = []
        self.rejects = 0
        self.rejected = 0
        self.history = []  # (t_s, level_cm), newest last
        self.state = 0
        self.level = None
        self.rate = 0.0
        self.distance = None
        self.next_sample = 0.0
        self.last_report = None

    def describe(self, kind, body):
        """The log line of a record this role emitted (App.emit), None for the default."""
        if kind == _K_LEVEL:
            return "level %.1fcm rate %.1f" % (body[_B_LEVEL_CM], body[_B_RATE])
        if kind == _K_ALARM:
            return "alarm %s (was %s) at %.1fcm" % (
                body[_B_STATE], body[_B_PREVIOUS], body[_B_ALARM_LEVEL])
        return None

    def thresholds(self):
        g = self.config.get
        return (g("thresholds.alert_cm"), g("thresholds.alarm_cm"), g("thresholds.critical_cm"))

    def step(self, t, read=None):
        """Called from the main loop with the simulated/real time; samples when due."""
        if t >= self.next_sample:
            self.sample(t, read)

    def sample(self, t, read=None):
        """Take one reading now; False when the sensor gave none."""
        self.next_sample = t + self.config.get("sample_interval_s")
        read = self.read or read
        d = read() if read is not None else None
        if d is None:
            return False
        self.feed(t, d)
        return True

    def to_mm(self, reading):
        """A sensor reading as mm: the distance (ultrasonic) or the depth (pressure)."""
        if not self.pressure:
            return reading
        g = self.config.get
        return pressure_mm(reading, g("sensor.zero_raw"), g("sensor.span_raw"),
                           g("sensor.span_mm"))

    def feed(self, t, reading):
        """One sensor reading at time t (s): filter, evaluate, emit records when due."""
        mm = self.to_mm(reading)
        if not self._accept(mm):
            return
        self.distance = _median(self.samples)
        if self.pressure:
            self.level = round((self.distance + self.config.get("sensor.offset_mm")) / 10, 1)
        else:
            self.level = round((self.config.get("datum_mm") - self.distance) / 10, 1)
        h = self.history
        h.append((t, self.level))
        if len(h) > _RATE_N:
            h.pop(0)
        dt = t - h[0][0]
        self.rate = round((self.level - h[0][1]) * 60 / dt, 2) if dt > 0 else 0.0
        self._evaluate()
        interval = self.interval()
        if self.last_report is None or t - self.last_report >= interval:
            self.last_report = t
            self.emit(_K_LEVEL, 0, {_B_LEVEL_CM: self.level,
                                         _B_RATE: self.rate,
                                         _B_DISTANCE_MM: self.distance})

    def interval(self):
        """Seconds between level records: fast, normal or calm."""
        g = self.config.get
        if self.state >= 1 or self.rate >= g("rise_cm_per_min"):
            return g("fast_interval_s")
        if abs(self.rate) < g("calm_cm_per_min"):
            return g("calm_interval_s")
        return g("report_interval_s")

    def _accept(self, d):
        s = self.samples
        if len(s) >= 3 and abs(d - _median(s)) > self.config.get("outlier_mm"):
            self.rejects += 1
            self.rejected += 1
            if self.rejects < _MAX_REJECTS:
                return False
            del s[:]  # a real jump: restart the filter from here
        self.rejects = 0
        s.append(d)
        if len(s) > _MEDIAN_N:
            s.pop(0)
        return True

    def _evaluate(self):
        lv = self.level
        hyst = self.config.get("thresholds.hysteresis_cm")
        up = down = 0
        for i, th in enumerate(self.thresholds()):
            if lv >= th:
                up = i + 1
            if lv >= th - hyst:
                down = i + 1
        new = max(up, min(self.state, down))
        if new != self.state:
            prev = self.state
            self.state = new
            self.emit(_K_ALARM, proto.F_PRIORITY, {_B_STATE: STATES[new],
                                                       _B_ALARM_LEVEL: lv,
                                                       _B_PREVIOUS: STATES[prev]})

    # -- deep sleep (battery.py) ----------------------------------------------------------
    def save(self):
        """What must survive a deep sleep, small enough for RTC memory (JSON)."""
        return {"s": self.samples, "h": [[t, lv] for t, lv in self.history], "st": self.state,
                "lr": self.last_report, "ns": self.next_sample, "rj": self.rejects,
                "n": self.rejected}

    def restore(self, d):
        self.samples = list(d.get("s") or [])
        self.history = [(t, lv) for t, lv in d.get("h") or []]
        self.state = int(d.get("st") or 0)
        self.last_report = d.get("lr")
        self.next_sample = float(d.get("ns") or 0)
        self.rejects = int(d.get("rj") or 0)
        self.rejected = int(d.get("n") or 0)


Role = WaterRole  # what App.make_role takes from roles/<name>.py
