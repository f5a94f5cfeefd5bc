# Simulated hardware of the water level node (roles/water.py): the sensor follows the
# scenario's water level (noise and rare outliers, like the real thing), as an ultrasonic
# distance or a pressure transducer's ADC reading.
import random


class Scenario:
    """Water level over simulated time: [t_s, level_cm] points interpolated linearly."""

    def __init__(self, data):
        pts = data.get("points") or [[0, 0]]
        self.points = [(float(t), float(v)) for t, v in pts]
        self.loop = bool(data.get("loop", False))
        self.noise_mm = float(data.get("noise_mm", 0))
        self.outlier_rate = float(data.get("outlier_rate", 0))
        self.mount_mm = data.get("mount_mm")

    def level_cm(self, t):
        pts = self.points
        end = pts[-1][0]
        if self.loop and end > 0:
            t = t % end
        if t <= pts[0][0]:
            return pts[0][1]
        for i in range(1, len(pts)):
            t1, v1 = pts[i]
            if t <= t1:
                t0, v0 = pts[i - 1]
                return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1
        return pts[-1][1]


class IO:
    def __init__(self, hw, config):
        self.hw = hw
        self.scenario = sc = Scenario(hw.scenario())
        self.mount_mm = sc.mount_mm or config.get("datum_mm")
        self.zero_raw = config.get("sensor.zero_raw")  # pressure: raw = zero + depth * k
        self.raw_per_mm = (config.get("sensor.span_raw") - self.zero_raw) / config.get(
            "sensor.span_mm")
        self.sensor_mm = config.get("sensor.offset_mm")

    def distance_mm(self):
        """One ultrasonic reading in mm (noise and rare outliers, like the real thing)."""
        sc = self.scenario
        self.hw.crash_check()
        if sc.outlier_rate and random.random() < sc.outlier_rate:
            return random.randint(200, int(self.mount_mm) + 500)
        level = sc.level_cm(self.hw.sim_s())
        noise = (random.random() + random.random() + random.random() - 1.5) * sc.noise_mm
        return max(0, int(self.mount_mm - level * 10 + noise))

    def pressure_raw(self):
        """One pressure transducer reading (ADC read_u16) for the scenario's level."""
        sc = self.scenario
        self.hw.crash_check()
        if sc.outlier_rate and random.random() < sc.outlier_rate:
            return random.randint(0, 65535)
        depth = sc.level_cm(self.hw.sim_s()) * 10 - self.sensor_mm
        noise = (random.random() + random.random() + random.random() - 1.5) * sc.noise_mm
        raw = int(self.zero_raw + (max(0, depth) + noise) * self.raw_per_mm)
        return min(65535, max(0, raw))
