# Over-the-air updates, the node's side (PROTOCOL.md 2.6): OTA_OFFER and OTA_CHUNK in, OTA_STATE
# out, the ota.switch and ota.state commands. Imported on demand (Session.ota) at the first OTA
# message or command, never at boot.
#
# Staging on flash: ota/manifest.cbor (the offered manifest), ota/stage.json ({"tag", "kind",
# "have", "bad", "staged"}, written atomically at every piece boundary: after a reboot the
# transfer resumes at the last verified piece) and the payload: ota/stage.bin for an app, the
# next OTA partition (esp32.Partition) for a firmware image. The switch unpacks an app into the
# app slot not running (/ota/a or /ota/b) and then, in one atomic write of ota/boot.json, makes
# it the trial (the loader, otaboot.py, boots it); a power cut before that write boots the old
# app, after it the trial.
import hashlib
import os
import sys

from micropython import const

from . import cbor, proto
from .journal import write_atomic

DIR = "ota"
STAGE = "ota/stage.json"
MANIFEST = "ota/manifest.cbor"
PAYLOAD = "ota/stage.bin"
KEY = "ota.key"  # 32 bytes, provisioned over serial (secret.set with "for": "ota")
BLOCK = const(4096)  # a firmware partition's erase block
_BAD_MAX = const(3)  # bad pieces in one transfer before it is refused as tampered
_EVERY = const(4)  # OTA_STATE at least every this many chunks
_BUF = const(512)
_TRIAL_S = const(120)  # a trial boot without a healthy session for this long is rolled back
_TRIAL_IDLE_S = const(30)  # a session up this long with nothing to send is healthy too


def _rm(path):
    try:
        if os.stat(path)[0] & 0x4000:  # a directory
            for name in os.listdir(path):
                _rm(path + "/" + name)
            os.rmdir(path)
        else:
            os.remove(path)
    except OSError:
        pass


def _mkdirs(path):
    at = ""
    for part in path.split("/"):
        at = at + "/" + part if at else part
        try:
            os.mkdir(at)
        except OSError:
            pass


def _version(text):
    """"1.4.0" -> (1, 4, 0); None when it is not dotted numbers."""
    try:
        return tuple(int(p) for p in text.split("."))
    except (ValueError, AttributeError):
        return None


def _mac_ok(key, msg, mac):
    """HMAC-SHA256(key, msg) == mac, compared in constant time. A 32-byte key needs no
    hashing (RFC 2104): here rather than auth.py's, whose BLE handshake does not fit the heap
    left beside this module on a node without BLE."""
    pad = key + bytes(32)
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in pad) + msg).digest()
    got = hashlib.sha256(bytes(b ^ 0x5C for b in pad) + inner).digest()
    r = len(got) ^ len(mac)
    for a, b in zip(got, mac):
        r |= a ^ b
    return r == 0


def _read(path, binary=False):
    try:
        with open(path, "rb" if binary else "r") as f:
            return f.read()
    except OSError:
        return None


def _partition():
    """The OTA partition a firmware image goes to; None when the board has none."""
    try:
        import esp32
        return esp32.Partition(esp32.Partition.RUNNING).get_next_update()  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - no esp32 module, no OTA partitions
        return None


class Ota:
    def __init__(self, session):
        self.s = session
        self.st = {}  # stage.json of the transfer held ({}: none)
        self.m = {}  # its manifest (a map)
        self.tag = None
        self.have = 0  # payload bytes held contiguous from 0
        self.piece = 0  # the piece `have` is in, and where it starts
        self.start = 0
        self.h = hashlib.sha256()  # of the current piece's bytes so far
        self.n = 0  # chunks since the last OTA_STATE
        self.f = None  # the open payload file (app)
        self.part = None  # the partition (firmware)
        self.refused = None  # (tag, reason) of the last refusal
        self.bad_total = 0  # bad pieces seen (counted for info)
        self.told = False  # boot_step: the trial / outcome was told after HELLO
        self.up_at = -1  # boot_step: seconds since boot when the session was first up
        self._load()

    # -- staging ---------------------------------------------------------------------------
    def _load(self):
        st = _read(STAGE)
        mb = _read(MANIFEST, True)
        if st is None or mb is None:
            return
        try:
            import json
            st = json.loads(st)
            self.m = cbor.loads(mb)
            self.tag = bytes.fromhex(st["tag"])
            self.st = st
            self._at(int(st["have"]))
            if st["kind"] == "firmware":
                self.part = _partition()
        except Exception:  # noqa: BLE001 - damaged staging: start afresh
            self.s.log("ota: staging unreadable, dropped")
            self.drop()

    def _at(self, have):
        """Position at `have`, a piece boundary (pieces before it verified)."""
        at = 0
        i = 0
        for size, _ in self.m[5]:
            if at >= have:
                break
            at += size
            i += 1
        self.have = self.start = at
        self.piece = i
        self.h = hashlib.sha256()

    def _save(self):
        import json
        self.st["have"] = self.start
        write_atomic(STAGE, json.dumps(self.st))

    def drop(self):
        """Forget the transfer held: its files go."""
        if self.f is not None:
            self.f.close()
            self.f = None
        for p in (STAGE, MANIFEST, PAYLOAD):
            _rm(p)
        self.st = {}
        self.m = {}
        self.tag = None
        self.have = self.start = self.piece = 0
        self.part = None

    # -- messages ---------------------------------------------------------------------------
    def on_message(self, mtype, msg):
        need = proto._need
        try:
            if mtype == proto.T_OTA_OFFER:
                need(msg, 1, lambda v: v in ("app", "firmware"), "app or firmware", mtype)
                need(msg, 2, lambda v: isinstance(v, bytes), "the manifest bytes", mtype)
                need(msg, 3, lambda v: isinstance(v, bytes) and len(v) == 32, "a 32-byte mac",
                     mtype)
            else:
                need(msg, 1, lambda v: isinstance(v, bytes) and len(v) == 8, "an 8-byte tag",
                     mtype)
                need(msg, 2, proto._uint, "a uint offset", mtype)
                need(msg, 3, lambda v: isinstance(v, bytes) and 0 < len(v) <= 512,
                     "1 to 512 bytes of data", mtype)
        except proto.ProtoError as e:
            self.s.errors_in += 1
            self.s.log("bad message: %s" % e.text)
            return self.s.send(proto.error(e.code, e.text, e.ref))
        if mtype == proto.T_OTA_OFFER:
            self.offer(msg[1], msg[2], msg[3], msg.get(4) is True)
        else:
            self.chunk(msg[1], msg[2], msg[3])

    def refuse(self, tag, reason, text):
        self.refused = (tag, reason)
        self.s.log("ota: refused %s: %s" % (reason, text))
        self.send("refused", tag, 0, reason)

    def offer(self, kind, mb, mac, force):
        tag = hashlib.sha256(mb).digest()[:8]
        key = _read(KEY, True)
        if key is None or len(key) != 32:
            return self.refuse(tag, "signature", "no ota key on this node (provision it: "
                                                 "roadside config ota-key)")
        if not _mac_ok(key, mb, mac):
            return self.refuse(tag, "signature", "mac does not match the ota key")
        del key
        if self.st and tag == self.tag:  # the same bundle: resume
            self.refused = None
            return self.state()
        guard = self.s.guard
        if guard is not None and guard.trial is not None:
            return self.refuse(tag, "busy", "an update is on trial")
        m = cbor.loads(mb)
        c = self.s.config
        if m.get(4) != proto.PROTOCOL_VERSION:
            return self.refuse(tag, "protocol", "protocol %s" % m.get(4))
        if kind not in ("app", "firmware") or c.get("board") not in (m.get(2) or ()):
            return self.refuse(tag, "board", "bundle for boards %s" % (m.get(2),))
        if c.get("role") not in (m.get(3) or ()):
            return self.refuse(tag, "role", "bundle for roles %s" % (m.get(3),))
        new = _version(m.get(1))
        if kind == "app":
            running = _version(self.s.fw)
        else:
            running = tuple(sys.implementation.version[:3])
        if new is None or (not force and running is not None and new <= running):
            return self.refuse(tag, "version", "%s, running %s" % (m.get(1), running))
        if kind == "firmware" and _partition() is None:
            return self.refuse(tag, "board", "no OTA partition for a firmware image")
        if self.s.prio_seq >= self.s.journal.first_unacked:
            return self.refuse(tag, "busy", "priority records not yet acked")
        self.drop()  # another bundle's staging (or none) goes
        st = os.statvfs("/")
        free = st[0] * st[4]
        if m.get(10, 0) > free:
            return self.refuse(tag, "space", "needs %d bytes of flash, %d free"
                               % (m.get(10, 0), free))
        _mkdirs(DIR)  # from now on the loader (otaboot.py) runs at every boot
        with open(MANIFEST, "wb") as f:
            f.write(mb)
        self.m = m
        self.tag = tag
        self.st = {"tag": tag.hex(), "kind": kind, "have": 0, "bad": 0, "staged": False,
                   "version": m[1], "size": m[7]}
        self._at(0)
        if kind == "firmware":
            self.part = _partition()
        self._save()
        self.refused = None
        self.s.log("ota: receiving %s %s (%d bytes)" % (kind, m[1], m[7]))
        self._forget_outcome()  # the last outcome is reported until a new transfer
        self.state()

    def chunk(self, tag, offset, data):
        st = self.st
        if not st or tag != self.tag or st["staged"]:
            return self.state()
        if offset != self.have:
            return self.state()  # the gateway rewinds to have
        self.n += 1
        boundary = False
        sizes = self.m[5]
        mv = memoryview(data)
        i = 0
        while i < len(data):
            size, digest = sizes[self.piece]
            k = min(len(data) - i, self.start + size - self.have)
            self._write(self.have, mv[i:i + k])
            self.h.update(mv[i:i + k])
            self.have += k
            i += k
            if self.have < self.start + size:
                continue
            if self.h.digest() != digest:
                st["bad"] += 1
                self.bad_total += 1
                self.s.log("ota: piece %d bad (%d in this transfer)" % (self.piece, st["bad"]))
                if st["bad"] >= _BAD_MAX:
                    self.drop()
                    return self.refuse(tag, "tampered", "%d bad pieces" % _BAD_MAX)
                self.have = self.start
                self.h = hashlib.sha256()
                self._save()
                return self.state()
            self.piece += 1
            self.start = self.have
            self.h = hashlib.sha256()
            boundary = True
        if self.have == self.m[7]:
            return self.finish()
        if boundary:
            self._flush()
            self._save()
        if boundary or self.n >= _EVERY:
            self.state()

    def _write(self, at, data):
        part = self.part
        if part is not None:
            while len(data):
                block, off = at // BLOCK, at % BLOCK
                if off == 0:
                    part.ioctl(6, block)  # erase the block before its first write
                k = min(len(data), BLOCK - off)
                part.writeblocks(block, data[:k], off)
                at += k
                data = data[k:]
            return
        f = self.f
        if f is None:
            try:
                f = open(PAYLOAD, "r+b")
            except OSError:
                f = open(PAYLOAD, "wb")
            self.f = f
        f.seek(at)
        f.write(data)

    def _flush(self):
        if self.f is not None:
            self.f.flush()

    def finish(self):
        """The whole payload held: read it back from flash against the manifest's digest."""
        self._flush()
        h = hashlib.sha256()
        buf = bytearray(_BUF)
        size = self.m[7]
        at = 0
        part, f = self.part, self.f
        if f is not None:
            f.seek(0)
        while at < size:
            k = min(_BUF, size - at)
            mv = memoryview(buf)[:k]
            if part is not None:
                part.readblocks(at // BLOCK, mv, at % BLOCK)
            elif f is not None:
                f.readinto(mv)
            h.update(mv)
            at += k
        if h.digest() != self.m[8]:
            tag = self.tag
            self.drop()
            return self.refuse(tag, "tampered", "the staged payload does not match its sha256")
        self.st["staged"] = True
        self.start = size
        self._save()
        self.s.log("ota: staged %s %s" % (self.st["kind"], self.st["version"]))
        self.state()

    # -- state ------------------------------------------------------------------------------
    def send(self, state, tag, have, reason=None, version=None):
        self.n = 0
        w = cbor.Writer()
        w.map(3 + (tag is not None) + (reason is not None) + (version is not None))
        w.int(0)
        w.int(proto.T_OTA_STATE)
        if tag is not None:
            w.int(1)
            w.bytes(tag)
        w.int(2)
        w.text(state)
        w.int(3)
        w.int(have)
        if reason is not None:
            w.int(4)
            w.text(reason)
        if version is not None:
            w.int(5)
            w.text(version)
        self.s.send(bytes(w.buf))
        return state

    def state(self):
        """Send this node's OTA_STATE; returns the state's name."""
        g = self.s.guard
        trial = g.trial if g is not None else None
        if trial is not None:
            return self.send("trial", bytes.fromhex(trial["tag"]), trial.get("size", 0),
                             None, trial["version"])
        st = self.st
        if st:
            return self.send("staged" if st["staged"] else "receiving", self.tag, self.have,
                             None, self.s.fw)
        if self.refused is not None:
            return self.send("refused", self.refused[0], 0, self.refused[1], self.s.fw)
        import otaboot
        b = otaboot.read()
        r = b.get("report")
        if r:
            if not r.get("told"):  # once told, later boots need not load this module
                r["told"] = True
                otaboot.write(b)
            return self.send(r["state"], bytes.fromhex(r["tag"]), 0, r.get("reason"),
                             r["version"] if r["state"] == "done" else self.s.fw)
        return self.send("idle", None, 0, None, self.s.fw)

    def _forget_outcome(self):
        """Forget the last outcome (a new transfer began): ota/boot.json without report."""
        import otaboot
        b = otaboot.read()
        if b.pop("report", None) is not None:
            otaboot.write(b)

    # -- switch and confirm -----------------------------------------------------------------
    def command(self, name, args):
        if name == "ota.state":
            return self.state()
        if name == "ota.switch":
            return self.switch(args.get("tag"))
        raise proto.CommandError("unknown command %s; known: ota.switch, ota.state" % name)

    def switch(self, tag):
        st = self.st
        if isinstance(tag, str):  # 16 hex digits: a JSON command API cannot carry bytes
            try:
                tag = bytes.fromhex(tag)
            except ValueError:
                tag = None
        if not st or not st["staged"] or tag != self.tag:
            raise proto.CommandError("ota.switch: no staged bundle with that tag (ota.state "
                                     "says what is held)")
        import otaboot
        b = otaboot.read()
        trial = {"tag": st["tag"], "version": st["version"], "kind": st["kind"],
                 "size": st["size"], "boots": 0}
        if st["kind"] == "app":
            slot = "b" if b.get("app") == "a" else "a"
            self._unpack(otaboot.SLOTS[1:] + slot)
            trial["slot"] = slot
        elif self.part is not None:
            self.part.set_boot()  # the bootloader boots it at the reset, once
            trial["slot"] = b.get("app")
        b["trial"] = trial
        b.pop("report", None)
        otaboot.write(b)  # the switch: one atomic write
        self.drop()
        self.s.reboot_pending = True
        self.s.log("ota: switched to %s %s: reboot into the trial" % (st["kind"],
                                                                      st["version"]))
        return {"version": trial["version"], "slot": trial["slot"]}

    def _unpack(self, root):
        """The staged app archive (per file: name length, name, size LE32, bytes; PROTOCOL.md
        2.6) into the slot directory `root`, emptied first."""
        _rm(root)
        self._flush()
        f = self.f or open(PAYLOAD, "rb")
        self.f = f
        f.seek(0)
        buf = bytearray(_BUF)
        made = set()
        at, size = 0, self.m[7]
        while at < size:
            n = f.read(1)[0]
            name = f.read(n).decode()
            left = int.from_bytes(f.read(4), "little")
            at += 5 + n + left
            if not n or name[0] == "/" or ".." in name or at > size:
                raise proto.CommandError("ota.switch: the staged archive is damaged")
            path = root + "/" + name
            d = path.rsplit("/", 1)[0]
            if d not in made:
                _mkdirs(d)
                made.add(d)
            with open(path, "wb") as out:
                while left:
                    mv = memoryview(buf)[:min(_BUF, left)]
                    f.readinto(mv)
                    out.write(mv)
                    left -= len(mv)

    # -- a trial boot / an outcome to tell (App.step while bootguard says ota_due) ----------
    def boot_step(self, secs):
        """Tell the gateway the trial or the last outcome once the session is up; confirm a
        trial once the session is healthy (HELLO answered and records acked, or TRIAL_IDLE_S
        up with nothing to send). True: the trial failed (no healthy session in TRIAL_S
        seconds since boot) and was rolled back: reset now."""
        s = self.s
        g = s.guard
        if s.up and not self.told:
            self.told = True
            self.state()
        if g.trial is None:
            g.ota_due = not self.told
            return False
        if s.up and self.up_at < 0:
            self.up_at = secs
        idle = s.journal.first_unacked == s.journal.next_seq
        if s.up and (g.acked or idle and secs - self.up_at >= _TRIAL_IDLE_S):
            self.confirm()
            g.trial = None
            g.ota_due = False
            return False
        if secs < _TRIAL_S:
            return False
        import otaboot
        otaboot.rollback("no_session")
        s.log("ota: trial without a healthy session in %d s: rolled back" % _TRIAL_S)
        return True

    def confirm(self):
        """The trial boot reached a healthy session: it becomes the app."""
        import otaboot
        b = otaboot.read()
        t = b.pop("trial", None)
        if t is None:
            return
        if t["kind"] == "firmware":
            import esp32
            esp32.Partition.mark_app_valid_cancel_rollback()
        else:
            b["app"] = t["slot"]
        b["report"] = {"state": "done", "tag": t["tag"], "version": t["version"], "told": True}
        otaboot.write(b)
        self.s.log("ota: trial of %s confirmed" % t["version"])
        self.send("done", bytes.fromhex(t["tag"]), t.get("size", 0), None, t["version"])
