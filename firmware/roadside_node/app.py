# The main loop: read the link, feed frames to the session, run the role on its clock,
# journal what it produces, health every health_interval_s, let the session send.
import gc

import select
from micropython import const

from . import VERSION, proto
from .bootguard import BootGuard
from .framing import Deframer
from .journal import Journal
from .roles import ROLES
from .session import Session

_POLL_MS = const(20)  # longest wait for link input before the role gets a turn
_GC_EVERY = const(8192)  # collect after this many bytes allocated (gc.threshold)
_K_HEALTH = const(3)  # the health record and its body keys (PROTOCOL.md 2.1)
_B_FREE_HEAP = const(1)
_B_UPTIME_S = const(2)
_B_JOURNAL_RECORDS = const(3)
_B_DROPPED_FULL = const(4)
_B_BOOT_COUNT = const(5)
_B_RESET_CAUSE = const(6)
_B_SAFE_MODE = const(7)


def make_role(config, emit, io=None, journal=None):
    """Role(config, emit, io, journal) of roles/<role>.py; io is its hardware (role_io)."""
    role = config.get("role")
    if role not in ROLES:
        raise ValueError("role: bad value %r; allowed: %s" % (role, ", ".join(ROLES)))
    mod = __import__("roadside_node.roles." + role, None, None, ("Role",))
    return mod.Role(config, emit, io, journal)


class App:
    def __init__(self, hw, config, log=print, ota=None):
        self.hw = hw
        self.config = config
        self.log = log
        self.journal = Journal(max_bytes=config.get("journal_max_bytes"))
        self.journal.load()
        self.session = Session(hw, self.journal, config, VERSION, log)
        self.deframer = Deframer()
        self.guard = BootGuard(config.get("safe_mode_after"), ota)  # ota: otaboot.select's
        self.safe = self.guard.safe  # crash loop: link, session and config only, no role
        self.session.safe_mode = self.safe
        self.session.guard = self.guard
        self.t_boot = hw.sim_s()  # role time need not start at 0 (RTC clock, deep sleep)
        self.role = None
        if not self.safe:
            self.role = make_role(config, self.emit, hw.role_io(config), self.journal)
        self.session.role = self.role
        self.next_health = 0.0
        self._full_logged = 0
        self.ble = None
        if config.get("ble"):
            gc.collect()  # the BLE buffers want contiguous blocks
            from .ble import BlePort
            self.ble = BlePort(hw, config, self.session, log, self)
            self.session.ble = self.ble

    def emit(self, kind, flags, body):
        t, clock = self.session.stamp()
        seq = self.journal.append(t, kind, flags | clock, body)
        if not seq:
            j = self.journal
            if j.dropped_full >= self._full_logged * 2 or not self._full_logged:
                self._full_logged = j.dropped_full
                self.log("journal full: dropped %d" % j.dropped_full)
            return 0
        if flags & proto.F_PRIORITY:
            self.session.prio_seq = seq  # an alarm burst: an OTA offer is answered busy
        describe = getattr(self.role, "describe", None)  # the role's own log line, if any
        text = describe(kind, body) if describe is not None else None
        self.log("seq %d %s" % (seq, text or "kind %d" % kind))
        return seq

    def health(self):
        j = self.journal
        self.emit(_K_HEALTH, 0, {_B_FREE_HEAP: self.hw.free_heap(),
                                 _B_UPTIME_S: self.hw.uptime_s(),
                                 _B_JOURNAL_RECORDS: j.count,
                                 _B_DROPPED_FULL: j.dropped_full,
                                 _B_BOOT_COUNT: j.boot_count,
                                 _B_RESET_CAUSE: self.hw.reset_cause(),
                                 _B_SAFE_MODE: self.safe})

    def step(self):
        hw = self.hw
        data = hw.uart_read()
        while data:
            try:  # a failure (a MemoryError too) costs these bytes, never a reset
                for payload in self.deframer.feed(data):
                    self.session.use_port(None)  # answer on the UART
                    self.session.on_payload(payload)  # guarded inside, per message
            except Exception as e:  # noqa: BLE001 - the guard itself
                self.session.failure(e)
            data = hw.uart_read()
        if self.ble is not None:
            try:
                self.ble.step()
            except MemoryError as e:  # a fragmented heap this step: the next one retries
                self.session.failure(e)
        t = hw.sim_s()
        if self.role is not None:
            self.role.step(t)
        if self.guard.check(t - self.t_boot):
            self.log("healthy minute: boot counter cleared")
        if self.guard.ota and self.session.ota().boot_step():  # an update's trial/outcome
            self.journal.close()
            hw.reset("soft")
        if t >= self.next_health:
            self.next_health = t + self.config.get("health_interval_s")
            self.health()
        try:
            self.session.tick()
        except MemoryError as e:  # records stay journaled; the next tick sends them
            self.session.failure(e)
        if self.session.reboot_pending:
            self.log("reboot")
            self.journal.close()
            hw.reset("soft")

    def run(self):
        self.log("boot %d cause %s node %s next_seq %d journal %d" % (
            self.journal.boot_count, self.hw.reset_cause(), self.config.get("node_id"),
            self.journal.next_seq, self.journal.count))
        if self.safe:
            self.log("safe mode: %d boots died before a healthy minute; role %s not started"
                     % (self.guard.unhealthy, self.config.get("role")))
        elif self.config.get("battery") and hasattr(self.role, "save"):
            from .battery import run_battery
            run_battery(self)  # never returns: it ends in deep sleep
        self.session.hello()
        poller = select.poll()
        link = self.hw.poll_obj()
        if link is not None:
            poller.register(link, select.POLLIN)
        ble_link = self.hw.ble_poll_obj() if self.ble is not None else None
        if ble_link is not None:
            poller.register(ble_link, select.POLLIN)
        n = 0
        mem_log = self.config.sim.get("mem_log")  # bench/bench_firmware_memory.py
        gc.collect()
        if mem_log != "alloc":  # the bench's alloc pass counts every byte between collects
            gc.threshold(_GC_EVERY)  # bounded garbage: the peak stays near what is live
        while True:
            self.step()
            self.hw.feed_watchdog()
            n += 1
            if n % 50 == 0:
                used = gc.mem_alloc()  # the most this gc cycle held: the peak's sample
                gc.collect()  # keep fragmentation down in a small heap
                if mem_log:
                    self.log("mem loop %d used %d live %d free %d t %d" % (
                        n, used, gc.mem_alloc(), gc.mem_free(), self.hw.sim_s()))
            poller.poll(_POLL_MS)
