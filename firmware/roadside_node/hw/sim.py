# Simulated hardware for the MicroPython unix port: the link UART is a pty (config sim.uart),
# a reset exits with 3; the role's own hardware (sensor, heads, reader...) is hw/sim_<role>.py,
# following the scenario file (config sim.scenario). Storage is the cwd (the node's
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
PIN_FILE = "wake_pin"  # the last deep sleep ended on the role's wake pin, not the timer
_VMIN = 6  # c_cc indices on Linux (the unix port's termios has no names for them)
_VTIME = 5


class SimHW:
    board = "sim"

    def __init__(self, config):
        sim = config.sim
        self.speed = float(sim.get("speed", 1.0)) or 1.0
        random.seed(int(sim.get("seed", 0)))
        self.seed = int(sim.get("seed", 0))
        self.scenario_path = sim.get("scenario")
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
        self._woke_pin = _remove(self._hw + PIN_FILE) and self._cause == "deepsleep"
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
        self.wake = None  # a role's own wake source (wake_pin): the scenario decides

    def role_io(self, config):
        """The role's simulated hardware: IO(self, config) of hw/sim_<role>.py."""
        mod = __import__("roadside_node.hw.sim_" + config.get("role"), None, None, ("IO",))
        return mod.IO(self, config)

    def scenario(self):
        """The scenario file's data (config sim.scenario), {} without one."""
        if not self.scenario_path:
            return {}
        with open(self.scenario_path) as f:
            return json.load(f)

    def host_path(self, name):
        """A file of the node's host dir (sim.hw_dir): hardware state that is not flash."""
        return self._hw + name

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

    def boot_s(self):
        """Role time when this boot began (the deep sleep's end, or 0)."""
        return self._base

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

    def crash_check(self):
        """A crash-looping node (sim.crash_after_s): the role's sensor read raises."""
        if self.crash_after_s is not None and self.sim_s() >= self.crash_after_s:
            raise RuntimeError("simulated crash (sim.crash_after_s)")

    def role_ms(self):
        return int(self.sim_s() * 1000)

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

    def wake_pin(self, pin, level=0):
        """Deep sleep also ends on this pin: pin.next_at(t) is the role time it fires next
        (the role's io follows its scenario), None for never."""
        self.wake = (pin, level)

    def woke_by_pin(self):
        """This boot is a deep sleep wake by the role's wake pin (its io wrote the file)."""
        return self._cause == "deepsleep" and self._woke_pin

    def deepsleep(self, ms):
        """Sleep ms of role time (ms / speed real), then come back as a deep sleep wake; or
        earlier, when the role's wake pin (wake_pin) fires first: its next_at(t) says when."""
        t = self.sim_s()
        end = t + ms / 1000
        if self.wake is not None:
            at = self.wake[0].next_at(t)
            if at is not None and at < end:
                end = at
                open(self._hw + PIN_FILE, "w").close()
        with open(self._hw + CLOCK_FILE, "w") as f:
            f.write(str(end))
        time.sleep_ms(int((end - t) * 1000 / self.speed))
        self.reset("deepsleep")

    def reset(self, cause="soft"):
        with open(self._hw + RESET_FILE, "w") as f:
            f.write(cause)
        # the qstrs this run interned ("qstr pool: n_pool=.., n_qstr=.."): never freed, so this
        # is their peak (tests/firmware/test_ota_roles.py reads it after ota.switch); and every
        # one of them when NODE_DIR holds a file qstr_verbose (bench/qstr_census.py)
        mp = __import__("micropython")
        if _remove(self._hw + "qstr_verbose"):
            mp.qstr_info(1)
        else:
            mp.qstr_info()
        sys.exit(EXIT_RESET)


def _remove(path):
    try:
        os.remove(path)
        return True
    except OSError:
        return False
