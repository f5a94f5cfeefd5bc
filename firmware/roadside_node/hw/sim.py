# Simulated hardware for the MicroPython unix port: the link UART is a pty (config sim.uart),
# the sensor follows a scenario file, a reset exits with 3. Storage is the cwd (the node's
# flash image, mounted as / by sim_main.py); what is hardware but not flash (reset cause, RTC
# memory and clock, the plan select lines' log) goes to sim.hw_dir, the node's host dir.
# Role time runs sim.speed times faster than real time; protocol timeouts stay real.
import json
import os
import random
import sys
import time

import gc
import termios  # type: ignore[import-not-found]  # unix port only

EXIT_RESET = 3
RESET_FILE = "reset_cause"
RTC_FILE = "rtc.bin"  # RTC memory: survives resets and deep sleep, not a power cut
CLOCK_FILE = "rtc_clock"  # role time at wake-up after a deep sleep (the RTC timer ran on)
_VMIN = 6  # c_cc indices on Linux (the unix port's termios has no names for them)
_VTIME = 5


class Scenario:
    """Water level over simulated time: [t_s, level_cm] points interpolated linearly."""

    def __init__(self, data):
        pts = data.get("points") or [[0, 0]]
        self.points = [(float(t), float(v)) for t, v in pts]
        self.loop = bool(data.get("loop", False))
        self.noise_mm = float(data.get("noise_mm", 0))
        self.outlier_rate = float(data.get("outlier_rate", 0))
        self.mount_mm = data.get("mount_mm")

    @classmethod
    def load(cls, path):
        with open(path) as f:
            return cls(json.load(f))

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


class SimHW:
    board = "sim"

    def __init__(self, config):
        sim = config.sim
        self.speed = float(sim.get("speed", 1.0)) or 1.0
        random.seed(int(sim.get("seed", 0)))
        path = sim.get("scenario")
        self.scenario = Scenario.load(path) if path else Scenario({})
        self.mount_mm = self.scenario.mount_mm or config.get("datum_mm")
        self.signal = None  # signal heads and loops (hw/sim_signal.py)
        self.reader = None  # the gantry's RFID reader (hw/sim_toll.py)
        role = config.get("role")
        if role in ("signal", "toll"):
            data = {}
            if path:
                with open(path) as f:
                    data = json.load(f)
            if role == "signal":
                from .sim_signal import SignalSim
                self.signal = SignalSim(data, config.get("phases"), config.get("debounce_ms"))
            else:
                from .sim_toll import SimReader
                self.reader = SimReader(data, int(sim.get("seed", 0)))
        self._t0 = time.ticks_ms()
        hw_dir = sim.get("hw_dir")
        self._hw = hw_dir + "/" if hw_dir else ""  # prefix of the non-flash files
        self.uart = None
        if sim.get("uart"):
            self.uart = open(sim["uart"], "r+b")
            fd = self.uart.fileno()
            termios.setraw(fd)
            attr = termios.tcgetattr(fd)
            attr[6][_VMIN] = 0  # reads return at once with what is there (or nothing)
            attr[6][_VTIME] = 0
            termios.tcsetattr(fd, termios.TCSANOW, attr)
        self._cause = "power_on"
        try:
            with open(self._hw + RESET_FILE) as f:
                self._cause = f.read().strip() or "unknown"
            os.remove(self._hw + RESET_FILE)
        except OSError:
            pass
        self._base = 0.0  # role time at boot: continues across a deep sleep, like the RTC
        if self._cause == "deepsleep":
            try:
                with open(self._hw + CLOCK_FILE) as f:
                    self._base = float(f.read())
            except (OSError, ValueError):
                pass
        elif self._cause == "power_on":
            _remove(self._hw + RTC_FILE)
        self.ble_path = sim.get("ble")  # pty to the BLE bridge; None: no BLE
        self.battery = int(sim.get("battery_pct", 255))  # advertised (255: mains / unknown)
        self.crash_after_s = sim.get("crash_after_s")  # a crash-looping node (safe mode tests)
        self.wdt_feeds = 0
        self.zero_raw = config.get("sensor.zero_raw")  # pressure: raw = zero + depth * k
        self.raw_per_mm = (config.get("sensor.span_raw") - self.zero_raw) / config.get(
            "sensor.span_mm")
        self.sensor_mm = config.get("sensor.offset_mm")

    # -- clocks --------------------------------------------------------------------------
    def ticks_ms(self):
        return time.ticks_ms()

    def ticks_diff(self, a, b):
        return time.ticks_diff(a, b)

    def uptime_s(self):
        return time.ticks_diff(time.ticks_ms(), self._t0) // 1000

    def sim_s(self):
        """Simulated seconds since boot: what the role's intervals and the scenario use."""
        return self._base + time.ticks_diff(time.ticks_ms(), self._t0) * self.speed / 1000

    def sleep_ms(self, ms):
        time.sleep_ms(ms)

    # -- link ----------------------------------------------------------------------------
    def uart_read(self):
        if self.uart is None:
            return b""
        return self.uart.read(256) or b""

    def uart_write(self, data):
        if self.uart is not None:
            self.uart.write(data)

    def poll_obj(self):
        return self.uart

    # -- BLE: hw/sim_bluetooth.py bridged to a virtual controller (tools/sim/ble_bridge.py) ------
    def bluetooth(self):
        """The `bluetooth` module stand-in, talking to the bridge on config sim.ble."""
        from . import sim_bluetooth
        sim_bluetooth.configure(self.ble_path)
        return sim_bluetooth

    def ble_pump(self):
        from . import sim_bluetooth
        sim_bluetooth.BLE().pump()

    def ble_poll_obj(self):
        if not self.ble_path:
            return None
        from . import sim_bluetooth
        return sim_bluetooth.BLE().poll_obj()

    def battery_pct(self):
        return self.battery

    def random_bytes(self, n):
        return os.urandom(n)

    # -- sensor --------------------------------------------------------------------------
    def distance_mm(self):
        """One ultrasonic reading in mm (noise and rare outliers, like the real thing)."""
        sc = self.scenario
        self._crash()
        if sc.outlier_rate and random.random() < sc.outlier_rate:
            return random.randint(200, int(self.mount_mm) + 500)
        level = sc.level_cm(self.sim_s())
        noise = (random.random() + random.random() + random.random() - 1.5) * sc.noise_mm
        return max(0, int(self.mount_mm - level * 10 + noise))

    def pressure_raw(self):
        """One pressure transducer reading (ADC read_u16) for the scenario's level."""
        sc = self.scenario
        self._crash()
        if sc.outlier_rate and random.random() < sc.outlier_rate:
            return random.randint(0, 65535)
        depth = sc.level_cm(self.sim_s()) * 10 - self.sensor_mm
        noise = (random.random() + random.random() + random.random() - 1.5) * sc.noise_mm
        raw = int(self.zero_raw + (max(0, depth) + noise) * self.raw_per_mm)
        return min(65535, max(0, raw))

    def _crash(self):
        if self.crash_after_s is not None and self.sim_s() >= self.crash_after_s:
            raise RuntimeError("simulated crash (sim.crash_after_s)")

    # -- signal monitor: heads, loops, plan select, fault relay -----------------------------
    def role_ms(self):
        return int(self.sim_s() * 1000)

    def signal_samples(self):
        """[(t_ms, heads)] since the last call: every change the scenario made, and now."""
        return self.signal.samples(self.role_ms())  # type: ignore[union-attr]

    def loop_counts(self):
        return self.signal.loop_counts(self.role_ms())  # type: ignore[union-attr]

    def plan_select(self, plan):
        """The controller's plan select lines: what was set is kept, and logged to a file."""
        t = self.role_ms()
        self.signal.plans.append((t, plan))  # type: ignore[union-attr]
        with open(self._hw + "plan_select.log", "a") as f:
            f.write("%d %d\n" % (t, plan))

    def fault_output(self, active):
        self.signal.fault_out.append((self.role_ms(), active))  # type: ignore[union-attr]

    # -- toll beacon: the reader's UART --------------------------------------------------
    def reader_read(self):
        return self.reader.read(self.role_ms())  # type: ignore[union-attr]

    def reader_write(self, data):
        self.reader.write(data)  # type: ignore[union-attr]

    # -- system --------------------------------------------------------------------------
    def free_heap(self):
        gc.collect()  # report what is really free, not what garbage happens to be left
        return gc.mem_free()

    def reset_cause(self):
        return self._cause

    def unique_id(self):
        return b"sim"

    def feed_watchdog(self):
        self.wdt_feeds += 1  # no watchdog here: count the feeds

    feed_wdt = feed_watchdog

    def rtc_load(self):
        try:
            with open(self._hw + RTC_FILE, "rb") as f:
                return f.read()
        except OSError:
            return b""

    def rtc_save(self, data):
        with open(self._hw + RTC_FILE, "wb") as f:
            f.write(data)

    def deepsleep(self, ms):
        """Sleep ms of role time (ms / speed real), then come back as a deep sleep wake."""
        with open(self._hw + CLOCK_FILE, "w") as f:
            f.write(str(self.sim_s() + ms / 1000))
        time.sleep_ms(int(ms / self.speed))
        self.reset("deepsleep")

    def reset(self, cause="soft"):
        with open(self._hw + RESET_FILE, "w") as f:
            f.write(cause)
        sys.exit(EXIT_RESET)


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass
