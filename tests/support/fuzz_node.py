# MicroPython code (not CPython): the node fuzz driver. It boots the real firmware (App, the
# session, the BLE port over hw/sim_bluetooth.py's API, auth, config, journal) in this process
# and feeds it mutated frames, counting what would reset a board: any exception that leaves
# App.step() or the BLE irq handler, or a boot that fails on a config the node accepted.
# Used by bench/bench_fuzz_node.py (its run(): tests/firmware/test_hostile_fuzz.py runs a few
# thousand frames, the bench the long form). Compiled with mpy-cross before it runs, so the
# heap it measures is the firmware's and not the compiler's.
#
#   import fuzz_node; fuzz_node.run("uart" | "ble_pre" | "ble_auth", frames, seed, fresh)
# feeds frames until done or until a reset or reboot ends this boot, and prints one JSON
# line (RESULT ...): frames, resets, reboots (asked for by a fuzzed `reboot` command),
# seconds, the slowest frame, heap figures and the traceback of a reset.
import gc
import json
import random
import struct
import sys
import time

from roadside_node import cbor, framing
from roadside_node.app import App
from roadside_node.config import Config
from roadside_node.framing import Deframer
from roadside_node.hw.sim import SimHW

auth = None  # roadside_node.auth, imported by the BLE links only (a UART node never loads it)
handshake = None  # roadside_node.handshake (the AUTH messages the fuzzer sends)

SECRET = bytes(range(32))
STEP_MS = 7  # virtual time per frame: 10 s handshake windows and role minutes go by
BASE = {"node_id": "fz-0001", "role": "water", "board": "sim", "health_interval_s": 60}


class Reboot(Exception):
    """hw.reset(): a reboot the fuzzed input asked for (the `reboot` command), not a crash."""


class Crash(Exception):
    """An exception out of the node's code (App.step, the BLE irq handler): a board would
    reset. Errors in the driver itself are not caught: they end the run."""


def radio():
    """hw/sim_bluetooth.py's BLE object with its bridge pty replaced by memory: events are
    injected with _event() (the bridge's wire format), notifications are collected."""
    from roadside_node.hw import sim_bluetooth as sb

    class Radio(sb._BLE):
        def __init__(self):
            super().__init__()
            self.buf = NOTIFIED[0]  # allocated once per run: no heap churn across boots
            self.n = 0
            self.kicked = False  # the node called gap_disconnect: the rig delivers the event

        def _open(self):
            return None

        def _send(self, op, body):
            if op == b"N":
                k = min(len(body) - 4, len(self.buf) - self.n)
                self.buf[self.n:self.n + k] = memoryview(body)[4:4 + k]
                self.n += k
            elif op == b"D":
                self.kicked = True

    sb._ble = r = Radio()
    return sb, r


class FuzzHW(SimHW):
    """The simulated board with a virtual clock and the UART in memory."""

    def __init__(self, config, clock):
        super().__init__(config)
        self.clock = clock
        self.inq = []
        self.out = bytearray()
        self.radio = None
        self.keep = config.get("ble") is False  # on a BLE link the UART's output is not read

    def ticks_ms(self):
        return self.clock[0]

    def ticks_diff(self, a, b):
        return a - b

    def uptime_s(self):
        return self.clock[0] // 1000

    def sim_s(self):
        return self.clock[0] / 1000

    def uart_read(self):
        return self.inq.pop(0) if self.inq else b""

    def uart_write(self, data):
        if self.keep and len(self.out) < 8192:  # the uart link reads and clears it per frame
            self.out.extend(data)

    def poll_obj(self):
        return None

    def bluetooth(self):
        sb, self.radio = radio()
        return sb

    def ble_pump(self):
        pass

    def ble_poll_obj(self):
        return None

    def free_heap(self):
        return gc.mem_free()  # no collect per call: the fuzzer asks `info` often

    def reset(self, cause="soft"):
        raise Reboot(cause)


# -- inputs ---------------------------------------------------------------------------------
NASTY = (0, -1, 1, 255, 65536, 2 ** 31, 2 ** 32 - 1, 2 ** 63 - 1, 2 ** 64 - 1, -2 ** 63,
         0.5, -0.0, 1e308, float("inf"), float("-inf"), float("nan"), True, False, None,
         "", "x", "water", "toll", "node_id", "conflicts", b"", b"\x00" * 16, [], {}, [[1, 2]])
KEYS = ("report_interval_s", "alert_cm", "alarm_cm", "thresholds.hysteresis_cm", "role",
        "node_id", "board", "site", "conflicts", "antenna_lanes", "journal_max_bytes",
        "datum_mm", "sensor.type", "ble", "phases", "rise_cm_per_min", "nope", "sim")
PAIRS = ([1, 2], [2, 3], [1, 1], [3, 17], [4, 5])
NAMES = ("ping", "info", "config.get", "config.set", "secret.set", "plan.select",
         "fault.clear", "signal.status", "toll.status", "reboot")


def nasty(r):
    k = r.getrandbits(4)
    if k == 0:
        return "A" * r.randrange(900, 1000)  # the ~990-character texts of issue 10
    if k == 1:
        return [PAIRS[i % len(PAIRS)] for i in range(r.randrange(1, 160))]  # 150 pairs...
    if k == 2:
        return {"k" * r.randrange(1, 40): nasty(r) if r.getrandbits(2) == 0 else 1}
    if k == 3:
        return bytes(r.getrandbits(8) for _ in range(r.randrange(0, 64)))
    return NASTY[r.randrange(len(NASTY))]


def message(r, req):
    """A structured message from the gateway, often with a nasty value somewhere."""
    k = r.getrandbits(3)
    if k == 0:
        return {0: 3, 1: nasty(r) if r.getrandbits(2) == 0 else r.randrange(0, 50)}
    if k == 1:
        return {0: 6, 1: nasty(r) if r.getrandbits(2) == 0 else 1795420800000}
    if k == 2:
        return {0: 7, 1: r.choice((2, 3, 6, 99)), 2: nasty(r) if r.getrandbits(1) else "x"}
    if k == 3:
        return {0: nasty(r) if r.getrandbits(1) else r.randrange(0, 12), 1: nasty(r)}
    name = NAMES[r.randrange(len(NAMES) - (0 if r.getrandbits(6) == 0 else 1))]
    if r.getrandbits(3) == 0:
        name = nasty(r)
    args = {}
    if name in ("config.get", "config.set"):
        if r.getrandbits(3):
            args["key"] = KEYS[r.randrange(len(KEYS))]
        else:
            args["key"] = nasty(r)
        if name == "config.set":
            args["value"] = nasty(r)
    elif r.getrandbits(1):
        args[r.choice(("plan", "secret", "key", "x"))] = nasty(r)
    msg = {0: 4, 1: req if r.getrandbits(4) else nasty(r), 2: name}
    if args or r.getrandbits(1):
        msg[3] = args if r.getrandbits(4) else nasty(r)
    return msg


def mutate_bytes(r, data):
    """Byte-level damage on an encoded payload: flips, cuts, insertions, repeats."""
    b = bytes(data)
    for _ in range(1 + r.getrandbits(2)):
        k = r.getrandbits(2)
        i = r.randrange(len(b)) if b else 0
        if not b:
            b = bytes((r.getrandbits(8),))
        elif k == 0:
            b = b[:i] + bytes((r.getrandbits(8),)) + b[i + 1:]
        elif k == 1:
            b = b[:i]
        elif k == 2:
            b = b[:i] + bytes(r.getrandbits(8) for _ in range(r.randrange(1, 9))) + \
                b[r.randrange(i, len(b) + 1):]
        else:
            b = b[:i] + b[i:i + r.randrange(1, 32)] + b[i:]
    return b


NOTIFIED = [None]  # the radio's notification buffer (BLE links)
LAST = [""]  # what the last frame carried, for the slowest frame's report


def label(m):
    if m.get(0) == 4:
        name = m.get(2)
        return "command " + (name[:24] if isinstance(name, str) else type(name).__name__)
    return "type " + repr(m.get(0))[:12]


def payload(r, req):
    try:
        m = message(r, req)
        LAST[0] = label(m)
        p = cbor.dumps(m)
    except Exception:  # noqa: BLE001 - a value this encoder refuses: garbage instead
        p = b"\xff"
    if r.getrandbits(2) == 0:
        p = mutate_bytes(r, p)
    return p


def frame(r, p):
    """A frame the deframer takes (valid CRC), or now and then a broken or oversize one."""
    k = r.getrandbits(5)
    if k == 0:
        return mutate_bytes(r, framing.encode(p[:framing.MAX_PAYLOAD]))
    if k == 1:
        return bytes(r.getrandbits(8) for _ in range(r.randrange(1, 1200))) + b"\x00"
    if len(p) > framing.MAX_PAYLOAD:
        return b"\x01" * (len(p) + 20) + b"\x00"
    return framing.encode(p)


# -- the node and its links -------------------------------------------------------------------
class Rig:
    def __init__(self, mode, seed, quiet=True, fresh=True):
        self.mode = mode
        self.seed = seed
        self.r = random  # SimHW seeds the module at every boot: boot() seeds it again
        self.clock = [1000]
        self.logs = []
        self.log = (lambda s: None) if quiet else print
        self.boots = 0
        self.app = None
        self.hw = None
        self.conn = 0
        self.authed = False
        self.ctr = 0
        self.key = None
        self.deframer = Deframer()
        self.answers = 0  # frames the node sent back: the fuzz reached its session
        if fresh:
            self.fresh_config()
        if mode != "uart":
            global auth, handshake
            from roadside_node import auth, handshake
            if fresh:
                from roadside_node import provision
                provision.store_secret(SECRET)
            NOTIFIED[0] = bytearray(4096)

    def fresh_config(self):
        cfg = dict(BASE)
        if self.mode != "uart":
            cfg["ble"] = True
        with open("config.json", "w") as f:
            f.write(json.dumps(cfg))

    def boot(self):
        self.app = None  # the old node goes: nothing of it may hold heap
        self.hw = None
        if auth is not None:
            from roadside_node.hw import sim_bluetooth as sb
            sb._ble = None  # its irq handler is the old BlePort's
        gc.collect()
        self.boots += 1
        dead = None
        try:  # what sim_main.py / main.py do at boot: a config the node itself accepted
            config = Config.load()  # over the link must boot again
            self.hw = FuzzHW(config, self.clock)
            self.app = App(self.hw, config, self.log)
        except Exception as e:  # noqa: BLE001 - the node would not boot: counted by run()
            dead = e
            self.app = self.hw = None
            self.fresh_config()
            gc.collect()
            config = Config.load()
        if (self.mode != "uart") != bool(config.get("ble")):
            self.fresh_config()  # the fuzz turned BLE on or off: this link's heap wants it
            config = Config.load()  # as it was (a UART node at 96k, BLE at 112k)
            self.app = None
        if self.app is None:
            self.hw = FuzzHW(config, self.clock)
            self.app = App(self.hw, config, self.log)
        random.seed(self.seed * 1000003 + self.boots)
        gc.collect()
        gc.threshold(8192)  # as App.run sets it: bounded garbage, the peak near what is live
        self.app.session.hello()
        self.authed = False
        if self.mode != "uart":
            self.connect()
        if dead is not None:
            raise Crash(dead)

    def ble(self, op, body):
        try:
            self.hw.radio._event(op, body)  # the node's irq handler runs in here
        except Exception as e:  # noqa: BLE001
            raise Crash(e) from e

    def connect(self):
        self.conn = (self.conn + 1) & 0xFFFF
        self.ble(0x43, struct.pack("<HB", self.conn, 0) + b"\x01" * 6)
        self.ble(0x55, struct.pack("<HH", self.conn, 247))
        self.authed = False
        self.deframer.reset()

    def write(self, data):
        """A central's writes of 200 bytes at most, as over a 247-byte MTU."""
        rx = self.app.ble.rx
        for i in range(0, len(data), 200):
            self.ble(0x57, struct.pack("<HH", self.conn, rx) + data[i:i + 200])
            self.step()

    def step(self):
        self.clock[0] += STEP_MS
        try:
            self.app.step()
        except Reboot:
            raise
        except Exception as e:  # noqa: BLE001
            raise Crash(e) from e
        radio = self.hw.radio
        if radio is not None:
            radio._inflight = 0  # the controller sent them all
            if radio.kicked:  # the node dropped the central: the link goes down
                radio.kicked = False
                self.ble(0x58, struct.pack("<H", self.conn))

    def notified(self):
        radio = self.hw.radio
        out = self.deframer.feed(bytes(radio.buf[:radio.n]))
        radio.n = 0
        self.answers += len(out)
        return out

    def handshake(self):
        """A gateway that knows the secret: challenge, response, proof -> sealed session."""
        self.notified()
        ng = bytes(self.r.getrandbits(8) for _ in range(16))
        self.write(b"\x00" + framing.encode(handshake.auth_msg(handshake.A_CHALLENGE, [(2, ng)])))
        for p in self.notified():
            m = cbor.loads(p)
            if m.get(0) == 8 and m.get(1) == handshake.A_RESPONSE:
                nn = m[2]
                proof = handshake.hmac_sha256(SECRET, handshake.L_GATEWAY + nn + ng)
                self.write(framing.encode(handshake.auth_msg(handshake.A_PROOF, [(2, proof)])))
                self.key = auth.FrameMac(handshake.hmac_sha256(SECRET, handshake.L_KEY + ng + nn))
                self.ctr = 0
                self.authed = self.app.ble.channel.authed
                return self.authed
        return False

    def sealed(self, inner):
        self.ctr += 1
        ctr = self.ctr
        if self.r.getrandbits(4) == 0:
            ctr = self.r.choice((0, 1, 2 ** 64 - 1, self.ctr - 1))  # replays, a wrapped ctr
        tag = self.key.tag(auth.DIR_GATEWAY, ctr, inner)
        if self.r.getrandbits(4) == 0:
            tag = tag[:4]
        return auth.sealed(ctr, inner, tag)

    def feed(self, req):
        """One fuzzed frame into the node on this mode's link."""
        r = self.r
        if self.mode == "uart":
            self.hw.inq.append(frame(r, payload(r, req)))
            self.step()
            self.answers += len(self.deframer.feed(bytes(self.hw.out)))
            self.hw.out = bytearray()
            return
        if self.mode == "ble_auth":
            if not self.authed or not self.app.ble.channel.authed:
                self.clock[0] += auth.LOCKOUT_MAX_MS  # any lockout from earlier is over
                if self.app.ble.conn is not None:  # a fresh connection for a fresh session
                    self.ble(0x58, struct.pack("<H", self.conn))
                self.connect()
                if not self.handshake():
                    self.ble(0x58, struct.pack("<H", self.conn))
                    self.connect()
                    return
            p = payload(r, req)
            self.write(frame(r, self.sealed(p) if len(p) < 960 else p))
        else:
            k = r.getrandbits(3)
            if k == 0:
                ng = bytes(r.getrandbits(8) for _ in range(16)) if r.getrandbits(1) else nasty(r)
                p = cbor.dumps({0: 8, 1: nasty(r) if r.getrandbits(1) else 1, 2: ng})
            elif k == 1:
                p = cbor.dumps({0: 8, 1: r.choice((1, 3, 2, nasty(r))), 2: nasty(r)})
            else:
                p = payload(r, req)
            self.write(frame(r, p))
        self.notified()
        if r.getrandbits(8) == 0 or self.app.ble.conn is None:
            if self.app.ble.conn is not None:
                self.ble(0x58, struct.pack("<H", self.conn))
            self.connect()


def run(mode, frames, seed=1, fresh=True, quiet=True):
    """Feed up to `frames` frames to one boot of the node. A reset or a reboot ends the run,
    as it ends a board's heap: the caller (bench/bench_fuzz_node.py) starts a new process on
    the same node directory (config, journal, secret) for the rest, like the board's boot."""
    rig = Rig(mode, seed, quiet, fresh)
    resets = reboots = skipped = 0
    traces = []
    try:
        rig.boot()
    except Crash as c:  # the node did not boot on the config it accepted over the link
        resets = 1
        traces.append("boot: " + repr(c.args[0]))
    slowest = slowest_at = 0
    slowest_what = ""
    gc.collect()
    free_min = gc.mem_free()
    live0 = None
    t0 = time.ticks_ms()
    done = 0
    while done < frames and not resets:
        a = time.ticks_us()
        end = False
        try:
            rig.feed(done + 1)
        except MemoryError:  # the driver's own frame did not fit (the node's are caught)
            skipped += 1
            gc.collect()
        except Reboot:
            reboots += 1
            end = True
        except Crash as c:  # what would reset a board
            resets += 1
            end = True
            import io
            s = io.StringIO()
            sys.print_exception(c.args[0], s)
            traces.append(s.getvalue())
        us = time.ticks_diff(time.ticks_us(), a)
        if us > slowest:
            slowest, slowest_at, slowest_what = us, done, LAST[0]
        done += 1
        if end:
            break
        if done % 64 == 0:
            gc.collect()
            free_min = min(free_min, gc.mem_free())
            if done == 256:
                live0 = gc.mem_alloc()  # warmed up: buffers, modules and caches are in
    secs = time.ticks_diff(time.ticks_ms(), t0) / 1000
    gc.collect()
    live1 = gc.mem_alloc()
    out = {"mode": mode, "frames": done, "resets": resets, "reboots": reboots,
           "seconds": secs, "slowest_ms": slowest / 1000, "slowest_at": slowest_at,
           "slowest_what": slowest_what, "free_min": free_min, "live_start": live0,
           "live_end": live1, "answers": rig.answers, "skipped": skipped,
           "failed": getattr(rig.app.session, "failed", 0), "traces": traces,
           "journal_records": rig.app.journal.count}
    if rig.app.ble is not None:
        out["ble"] = rig.app.ble.stats()
    NOTIFIED[0] = rig.app = rig.hw = None  # measured: make room to print the result
    gc.collect()
    print("RESULT " + json.dumps(out))
    return out
