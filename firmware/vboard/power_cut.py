# The power-cut sweep (docs/RELIABILITY.md "Power cuts"): a node's flash is cut at every block
# program/erase of the writes that matter (journal append, state save on send and on ACK,
# compaction, boot, config save, secret provisioning, a toll transaction), then remounted
# and booted as the App does, and checked against what the gateway and the toll reader saw. Runs under the unix port with firmware/ on
# sys.path: tests/firmware/test_power_cut.py (bounded) and bench/bench_power_cut.py (full).
#
# A scenario is a list of segments of steps. The image before each segment is kept; for every
# write index N of the segment (counted once with no cut) and every `keep` (bytes of that
# write that land), the segment is replayed from that image with the power cut at write N.
# Every replay runs in this one process on a RAM copy of the image.
import io
import json
import os

import vfs
from micropython import const

from roadside_node import auth, cbor, proto
from roadside_node.bootguard import BootGuard
from roadside_node.config import Config, ConfigError, canonical
from roadside_node.framing import Deframer
from roadside_node.journal import Journal
from roadside_node.session import Session

from .blockdev import BLOCK_SIZE, FileBlockDev, PowerCut, PowerLost

MNT = "/flash"  # where the node's flash is mounted; the node works in it (its "/")
BLOCKS = const(64)  # 256 KiB of 4 KiB sectors: room for LittleFS's copy-on-write
KEEPS = (0, 7, 2048)  # bytes of the cut write that land: none, a torn program, half a sector
_KIND = const(1)  # a water level record (roles/water.py)


class _Dev(FileBlockDev):
    """A flash image in RAM (io.BytesIO) that reads, writes and erases without allocating:
    the garbage collector closes a dead filesystem's open files (finalisers) with the heap
    locked, and those writes must go through quietly."""

    _blank = b"\xff" * BLOCK_SIZE

    def __init__(self, data):  # no super().__init__: that opens a host file
        self.count = len(data) // BLOCK_SIZE
        self.f = io.BytesIO()
        self.f.write(data)  # a copy now: BytesIO(data) would copy at the first write

    def erase(self, n):
        self.f.seek(n * BLOCK_SIZE)
        self.f.write(self._blank)

    def image(self):
        return self.f.getvalue()


class _Hw:
    """The little of a board that Session uses here: a clock that never moves (no timeouts)
    and a UART whose RECORDS frames are checked as the gateway would decode them."""

    def __init__(self):
        self.deframer = Deframer()
        self.bad = []  # what was wrong with frames sent
        self.model = None  # the Model whose `sent` each frame raises as it goes out
        self.reader_out = b""

    def ticks_ms(self):
        return 0

    def ticks_diff(self, a, b):
        return a - b

    def uptime_s(self):
        return 0

    def reset_cause(self):
        return "power_on"

    def free_heap(self):
        return 0

    def reader_read(self):
        """The toll reader's lines: what `reader_out` queued (the reader model's resends)."""
        data, self.reader_out = self.reader_out, b""
        return data

    def reader_write(self, data):
        """The node acknowledges a passage's reads ("A,tag,rseq"): the reader forgets them."""
        m = self.model
        data = bytes(data)  # the role may hand a memoryview of its line buffer
        f = data[1:data.find(b"*")].split(b",")
        if m is not None and f[0] == b"A":
            tag, rseq = f[1].decode(), int(f[2])
            m.reads = [r for r in m.reads if r[1] != tag or r[0] > rseq]

    def uart_write(self, data):
        for payload in self.deframer.feed(bytes(data)):  # FrameWriter hands a memoryview
            try:
                msg = cbor.loads(payload)
                if msg[0] == proto.T_RECORDS:
                    for rec in msg[2]:
                        if self.model is not None and rec[0] > self.model.sent:
                            self.model.sent = rec[0]
                        if rec != cbor.loads(expected(rec[0])):
                            self.bad.append("sent record %r differs from what was journaled"
                                            % (rec,))
            except (cbor.CBORError, IndexError, KeyError, TypeError) as e:
                self.bad.append("sent frame does not decode: %r" % (e,))


def body(seq):
    """A record body whose size varies with seq (so records straddle sectors unevenly)."""
    return {1: seq / 4, 3: seq, 7: "x" * (seq % 29)}


_TOLL: dict = {}  # seq -> the toll transaction record journaled with it (same every replay)


def expected(seq):
    """The CBOR record the journal must hold for seq."""
    rec = _TOLL.get(seq)
    return rec if rec is not None else proto.record(seq, 1000 + seq, _KIND, 0, body(seq))


def _reader_line(text):
    from roadside_node.roles.toll import line
    return line(text)


class Model:
    """What the outside world knows: the seqs handed out, sent and acknowledged, the config
    and secret last saved, and the step in flight when the power went."""

    def __init__(self):
        self.handed = 0  # highest seq an append returned
        self.sent = 0  # highest seq sent to the gateway
        self.acked = 0  # highest ACK the node finished handling
        self.gw_acked = 0  # highest ACK the gateway sent (the last may be in flight)
        self.appending = 0  # seq of an append in flight
        self.dropped = 0  # records dropped on a full journal, as counted when done
        self.reads = []  # toll reads the reader holds unacknowledged: (rseq, tag, ms)
        self.rseq = 0  # the reader's read counter
        self.ms = 0  # the reader's clock
        self.tags = []  # every tag that passed the gantry: each owes one transaction
        self.config = {}
        self.config_next = None  # the config a set in flight would leave
        self.secret = None
        self.secret_next = None

    def copy(self):
        m = Model()
        for name in ("handed", "sent", "acked", "gw_acked", "appending", "dropped", "config_next",
                     "secret", "secret_next"):
            setattr(m, name, getattr(self, name))
        m.config = json.loads(json.dumps(self.config))
        m.reads = list(self.reads)
        m.rseq, m.ms, m.tags = self.rseq, self.ms, list(self.tags)
        return m


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return 0


class Node:
    """One boot of the node on the mounted flash: config, boot guard, journal, session."""

    def __init__(self, m, answered=True):
        self.boot(m, answered)

    def boot(self, m, answered=True):
        try:
            self.config = Config.load()
            self.config_error = None
        except ConfigError as e:  # what main.py would meet: recorded as a violation
            self.config = Config({})
            self.config_error = str(e)
        self.journal = Journal(max_bytes=self.config.get("journal_max_bytes"))
        self.journal.load()
        self.guard = BootGuard(self.config.get("safe_mode_after"))
        self.secret = auth.load_secret()
        self.hw = _Hw()
        self.session = Session(self.hw, self.journal, self.config, "power-cut", lambda s: None)
        self.session.up = True
        if answered:
            self.hello_answered(m)
        self.role = None
        if self.config.get("role") == "toll":  # its acknowledgement log loads at boot
            from roadside_node.roles.toll import TollRole
            self.role = TollRole(self.config, self.emit, self.hw, self.journal)

    def hello_answered(self, m):
        """The gateway's answer to the boot's HELLO (gateway/session.py `_resume`): it stored
        every record sent (frames are checked whole as they go out) and acks what it acked
        before; a node whose counter is unsure, or behind what is stored, is told where to go
        on. Without this answer an unsure node (a first boot, or state recovered from its
        backup) would hold every record and take no ACK."""
        j, high = self.journal, m.sent
        if j.unsure:
            resume = high + 1 if high >= j.unsure else None
        else:
            resume = high + 1 if j.next_seq <= high else None
        self.session.on_ack(m.gw_acked, resume)
        m.acked = max(m.acked, min(m.gw_acked, j.next_seq - 1))

    def emit(self, kind, flags, body):
        """App.emit for the toll role: journal the transaction, noting what it must read."""
        seq = self.journal.next_seq
        _TOLL[seq] = proto.record(seq, 0, kind, flags, body)
        m = self.hw.model  # the model of the step (or check) that drives the reader
        if m is None:
            return self.journal.append(0, kind, flags, body)
        m.appending = seq
        got = self.journal.append(0, kind, flags, body)
        m.appending = 0
        if got:
            m.handed = got
        return got

    def reader_sends(self, m):
        """The reader (re)sends every read it holds, then a heartbeat past the window: the
        role closes the passages and journals them (or knows them journaled)."""
        self.hw.model = m
        out = []
        for rseq, tag, ms in m.reads:
            out.append(_reader_line(b"R,%d,%s,1,-50,%d" % (rseq, tag, ms)))
        m.ms += 5000
        out.append(_reader_line(b"H,%d,OK" % m.ms))
        self.hw.reader_out = b"".join(out)
        self.role.step(0)  # type: ignore[union-attr]

    def step(self, m, kind, arg):
        """Run one step; `m` is updated only once it is done (a cut leaves the in-flight
        fields set). Returns the step's label for the report."""
        j = self.journal
        if kind == "append":
            seq = j.next_seq
            m.appending = seq
            got = j.append(1000 + seq, _KIND, 0, body(seq))
            m.appending = 0
            if not got:  # full: dropped and counted (the count is saved)
                m.dropped = j.dropped_full
                return "append to a full journal"
            if got != seq:
                raise AssertionError("append returned %d, wanted %d" % (got, seq))
            m.handed = seq
            return "journal append"
        if kind == "send":  # the session's send window: mark_sent then the RECORDS frame
            self.hw.model = m  # a cut between two frames: the first one was sent
            self.session.pump(0)
            if self.hw.bad:
                raise AssertionError("; ".join(self.hw.bad))
            return "state save on send"
        if kind == "ack":  # the gateway acks all but `arg` of what it was sent
            upto = m.sent - arg
            if upto <= m.acked:
                return "ack (nothing new)"
            m.gw_acked = max(m.gw_acked, upto)
            size = _size(j.path)
            self.session.on_ack(upto)
            m.acked = upto
            # the journal file shrinks only when it is compacted
            return "compaction on ack" if _size(j.path) < size else "state save on ack"
        if kind == "boot":  # a clean restart (App.step on reboot closes the journal)
            j.close()
            self.boot(m)
            return "boot"
        if kind == "passage":  # a vehicle under the gantry: `arg` reads of a new tag
            tag = "E2%06X" % (len(m.tags) + 1)
            m.tags.append(tag)
            for _ in range(arg):
                m.rseq += 1
                m.ms += 40
                m.reads.append((m.rseq, tag, m.ms))
            self.reader_sends(m)
            return "toll transaction"
        if kind == "config":
            key, value = canonical(arg[0]), arg[1]
            trial = json.loads(json.dumps(m.config))
            if "." in key:
                sec, sub = key.split(".", 1)
                trial.setdefault(sec, {})[sub] = value
            else:
                trial[key] = value
            m.config_next = trial
            self.session.run("config.set", {"key": key, "value": value})
            m.config = self.config.data
            m.config_next = None
            return "config save"
        if kind == "secret":
            m.secret_next = bytes([arg] * auth.SECRET_LEN)
            self.session.use_port(None)  # over the serial cable, as provisioning is
            self.session.run("secret.set", {"secret": "%02x" % arg * auth.SECRET_LEN})
            m.secret = m.secret_next
            m.secret_next = None
            return "secret provisioning"
        raise ValueError("unknown step %r" % (kind,))


def mount(dev):
    """Mount dev as the node's flash and work in it. OSError when LittleFS finds no valid
    filesystem (the ESP32 port would then format it: every record lost)."""
    fs = vfs.VfsLfs2(dev)  # type: ignore[abstract]  # the stub declares it abstract
    vfs.mount(fs, MNT)
    os.chdir(MNT)


def unmount():
    os.chdir("/")
    try:
        vfs.umount(MNT)
    except (OSError, PowerLost):
        pass


def check(m, image):
    """Boot from the surviving image and return the broken promises (empty: none)."""
    m = m.copy()  # the toll reader's resends below move it on
    bad = []
    dev = _Dev(image)
    try:
        mount(dev)
    except OSError as e:
        return ["flash does not mount (%s): the board would format it" % e]
    try:
        try:
            node = Node(m, answered=False)
        except Exception as e:  # any exception here is a node that cannot boot
            return ["boot failed: %r" % (e,)]
        j = node.journal
        # Before the gateway answers: a node sure of its state holds no acknowledged record.
        # (Unsure, its state came from the backup, one save behind: the answer re-acks.)
        if not j.unsure and j.count and j.first_unacked <= m.acked:
            bad.append("acknowledged records come back: first held %d, acked %d" % (
                j.first_unacked, m.acked))
        node.hello_answered(m)
        if node.config_error:
            bad.append("config broken: %s" % node.config_error)
        elif node.config.data != m.config and node.config.data != m.config_next:
            bad.append("config %r is neither old %r nor new %r" % (
                node.config.data, m.config, m.config_next))
        if node.secret != m.secret and node.secret != m.secret_next:
            bad.append("secret is neither the old nor the new one")
        if j.next_seq <= max(m.handed, m.sent):
            bad.append("seq reuse: next_seq %d, handed out %d, sent %d" % (
                j.next_seq, m.handed, m.sent))
        first, n = j.first_unacked, j.count
        if n and first <= m.acked and not bad:
            bad.append("acknowledged records come back after the gateway's answer: first "
                       "held %d, acked %d" % (first, m.acked))
        if m.handed > m.gw_acked and (first > m.gw_acked + 1 or first + n <= m.handed):
            bad.append("records lost: held %d..%d, gateway acked %d, handed out %d" % (
                first, first + n - 1, m.gw_acked, m.handed))
        top = max(m.handed, m.appending)
        if n and first + n - 1 > top:
            bad.append("records never appended: held up to %d, appended %d" % (
                first + n - 1, top))
        if j.dropped_full < m.dropped:
            bad.append("drops forgotten: %d counted, %d before the cut" % (
                j.dropped_full, m.dropped))
        # the node goes on: its next record takes a fresh seq, and everything reads back
        fresh = j.next_seq
        got = j.append(1000 + fresh, _KIND, 0, body(fresh))  # 0: full, dropped and counted
        if got and (got != fresh or got <= max(m.handed, m.sent)):
            bad.append("the next record got seq %d (handed out %d, sent %d)" % (
                got, m.handed, m.sent))
        for seq in range(first, first + n):
            if j.read(seq) != expected(seq):
                bad.append("record %d reads back wrong" % seq)
                break
        if node.role is not None and m.tags:
            bad.extend(_charged_once(node, m))
        j.close()
    finally:
        unmount()
    return bad


class _Cut(PowerCut):
    """PowerCut that, once the power is gone, neither lands a write nor raises: PowerLost
    raised from inside LittleFS leaves its C state half-way, and the garbage collector's
    later close of that filesystem's open files then ran on it (a rare segfault). So the
    node runs on to the end of its step on a flash that takes nothing more, and what the
    world knew is taken at the instant of the cut (on_cut)."""

    def __init__(self, dev, on_cut):
        super().__init__(dev)
        self.on_cut = on_cut

    def _cut(self):
        if self.on_cut is not None:
            self.on_cut()
            self.on_cut = None

    def readblocks(self, n, buf, off=0):
        self.dev.readblocks(n, buf, off)  # what reached the flash still reads back

    def writeblocks(self, n, buf, off=0):
        if self.dead:
            return
        try:
            super().writeblocks(n, buf, off)
        except PowerLost:
            self._cut()

    def ioctl(self, op, arg):
        if self.dead:
            return 0
        try:
            return super().ioctl(op, arg)
        except PowerLost:
            self._cut()
            return 0


def _charged_once(node, m):
    """The reader resends what it holds; then every tag that passed must be in exactly one
    transaction, journaled or delivered (records of this role are never acked here)."""
    lineage = dict(_TOLL)
    node.reader_sends(m)
    _TOLL.clear()  # what this check journals is not part of the scenario's history
    _TOLL.update(lineage)
    j = node.journal
    charged: dict = {}
    for seq in range(j.first_unacked, j.first_unacked + j.count):
        rec = cbor.loads(j.read(seq))
        if rec[2] == 20:  # a toll transaction (roles/toll.py)
            tag = rec[4][1]
            charged[tag] = charged.get(tag, 0) + 1
    bad = []
    for tag in m.tags:
        if charged.get(tag, 0) != 1:
            bad.append("toll tag %s charged %d times" % (tag, charged.get(tag, 0)))
    return bad


def replay(image, model, steps, cut_at=0, keep=0, owner=None):
    """Boot from `image` and run `steps` with the power cut at write `cut_at` (0: never).
    A first step ("power on", None) puts the boot itself in the cut's range. Returns
    (device, model, whether the power was cut): the model as it stood at the cut, else
    after the steps; `owner` gets the label of the step that made each write."""
    dev = _Dev(image)
    m = model.copy()
    at_cut: list = []
    pc = _Cut(dev, lambda: at_cut.append(m.copy()))
    mount(pc)
    cold = bool(steps) and steps[0][0] == "power on"
    if cold:
        pc.cut_at, pc.keep = cut_at, keep
        steps = steps[1:]
    try:
        node = Node(m)
        if cold and owner is not None:
            owner.extend(["boot"] * pc.writes)
        if not cold:
            pc.writes = 0
            pc.cut_at, pc.keep = cut_at, keep
        for kind, arg in steps:
            if pc.dead:
                break
            before = pc.writes
            label = node.step(m, kind, arg)
            if owner is not None:
                owner.extend([label] * (pc.writes - before))
        if not pc.dead:
            node.journal.close()
    except Exception:  # after the cut the node may trip over its own lost writes: it is dead
        if not pc.dead:
            raise
    unmount()
    if pc.dead:
        return dev, at_cut[0], True
    return dev, m, False


def cut_once(image, model, steps, n, keep):
    """Replay `steps` from `image` with the power cut at write n; (surviving image, model at
    the cut, whether the cut came)."""
    dev, m, cut = replay(image, model, steps, n, keep)
    return dev.image(), m, cut


def _tally(report, label, first_keep, problems, out, where):
    st = report.setdefault(label, [0, 0, 0])  # writes, cuts, violations
    st[1] += 1
    if first_keep:
        st[0] += 1
    if problems:
        st[2] += 1
        out("VIOLATION %s: %s" % (where, "; ".join(problems)))


_POWER_ON = [("power on", None)]


def sweep_segment(name, image, model, steps, keeps, out, report, recovery=0):
    """Cut at every write of `steps` run from `image`; returns the image and model after.
    With `recovery` (N > 0), the boot after every Nth cut of the first keep is cut in turn
    at every one of its writes."""
    owner: list = []  # owner[i]: label of the step that made write i + 1
    dev, after_model, _ = replay(image, model, steps, owner=owner)
    after = dev.image()
    for keep in keeps:
        for n in range(1, len(owner) + 1):
            survivor, m, cut = cut_once(image, model, steps, n, keep)
            label = owner[n - 1]
            where = "%s / %s: write %d keep %d" % (name, label, n, keep)
            if not cut:
                problems = ["write %d never came: the write count changed between runs" % n]
            else:
                problems = check(m, survivor)
            _tally(report, label, keep == keeps[0], problems, out, where)
            if recovery and keep == keeps[0] and n % recovery == 0 and not problems:
                boot: list = []
                replay(survivor, m, _POWER_ON, owner=boot)
                for b in range(1, len(boot) + 1):
                    image2, m2, cut = cut_once(survivor, m, _POWER_ON, b, keep)
                    problems = check(m2, image2) if cut else ["boot write %d never came" % b]
                    _tally(report, "boot after a cut", False, problems, out,
                           "%s, then boot write %d" % (where, b))
                report.setdefault("boot after a cut", [0, 0, 0])[0] += len(boot)
    return after, after_model


def build(steps_of, keeps, out, only=None, recovery=0):
    """Run every segment in turn from a blank flash, sweeping those marked to be swept (and
    named with `only` in them, when given)."""
    dev = _Dev(b"\xff" * (BLOCKS * BLOCK_SIZE))
    vfs.VfsLfs2.mkfs(dev)  # type: ignore[arg-type]  # the stub wants its own block device ABC
    image = dev.image()
    model = Model()
    report: dict = {}
    for name, steps, swept in steps_of:
        if swept and (only is None or only in name):
            image, model = sweep_segment(name, image, model, steps, keeps, out, report,
                                         recovery)
        else:
            dev, model, _ = replay(image, model, steps)
            image = dev.image()
    return report


def _appends(n, send_every=0, ack_lag=-1):
    steps = []
    for i in range(n):
        steps.append(("append", None))
        if send_every and i % send_every == send_every - 1:
            steps.append(("send", None))
            if ack_lag >= 0:
                steps.append(("ack", ack_lag))
    return steps


def scenario(full=True):
    """(name, steps, swept) segments: a node's life from its first boot."""
    k = 1 if full else 0
    segs = [
        ("first boot", [("power on", None)], True),
        ("a reboot", [("boot", None)], True),
        ("appends to an empty journal", _appends(8 + 16 * k), True),
        ("send and ack", [("send", None), ("ack", 3), ("ack", 0)], True),
        ("appends, sends, acks", _appends(16 + 32 * k, 4, 2), True),
        ("reboot with acked records at the head", [("boot", None)], True),
        ("backlog past 4 KiB", _appends(200), False),
        ("appends to a multi-sector journal", _appends(6 + 10 * k), True),
        ("send and ack a backlog past 4 KiB: compaction", [("send", None), ("ack", 0)] * 4,
         True),
        ("reboot, append, ack everything", [("boot", None)] + _appends(3, 1, 0), True),
        ("config saves", [
            ("config", ("node_id", "wl-0042")), ("config", ("role", "water")),
            ("config", ("site", "Canal 7, Thu Dau Mot")),
            ("config", ("report_interval_s", 30)), ("config", ("alert_cm", 90.0)),
            ("config", ("journal_max_bytes", 65536)),
        ][:6 if full else 3], True),
        ("secret provisioning", [("secret", 0xA5), ("secret", 0x3C)][:2 if full else 1],
         True),
        ("appends after the config", _appends(4 * k, 2, 0), bool(k)),
        ("a toll beacon", [("config", ("role", "toll"))], False),
        ("toll transactions", [("passage", 3)] * (3 + 5 * k), True),
        ("a smaller journal", [("config", ("journal_max_bytes", 1024)),
                               ("config", ("role", "water"))], False),
        ("fill it", _appends(26), False),
        ("appends to a full journal", _appends(6 + 10 * k), True),
    ]
    return segs


def main(full=True, keeps=KEEPS, out=print, only=None, recovery=0):
    """Run the sweep; prints each violation, one JSON line per step kind, then the totals,
    and returns (cuts, violations). `recovery` N: cut the boot after every Nth cut too."""
    report = build(scenario(full), keeps, out, only, recovery)
    cuts = violations = 0
    for label in sorted(report):
        w, c, v = report[label]
        cuts += c
        violations += v
        out(json.dumps({"op": label, "writes": w, "cuts": c, "violations": v}))
    out(json.dumps({"total_cuts": cuts, "violations": violations, "keeps": list(keeps)}))
    return cuts, violations
