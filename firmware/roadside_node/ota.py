# Over-the-air updates, the node's side (PROTOCOL.md 2.6): OTA_OFFER and OTA_CHUNK in, OTA_STATE
# out, the ota.switch and ota.state commands. Imported on demand (Session.ota) at the first OTA
# message or command, or at the first step of a boot with a trial or an outcome to tell
# (bootguard's `ota`); never on a node's ordinary boot.
#
# Staging on flash: ota/manifest.cbor (the offered manifest), ota/stage.json ({"tag", "kind",
# "have", "bad", "staged"}, written atomically at every piece boundary: after a reboot the
# transfer resumes at the last verified piece) and the payload: ota/stage.bin for an app, the
# next OTA partition (esp32.Partition) for a firmware image. The switch makes the update the
# trial in one atomic write of ota/boot.json; for an app the loader (otaboot.py) then unpacks
# ota/stage.bin into the app slot not running (/ota/a or /ota/b) at the next boot, before the
# app is imported, and boots it. A power cut before that write boots the old app; after it the
# trial (unpacked again if the cut came while unpacking).
#
# Held while the chunks flow: this module only (the chunk checks, piece sha256, `have`, the
# payload write, OTA_STATE, and the read-back and switch that follow: no import at the end of
# a transfer, when the heap is in its smallest pieces). The steps taken once are imported for
# the step and dropped after (_use, _drop): ota_steps.py (offer checks and staging, resume
# after a reboot), ota_fw.py (esp32.Partition: firmware bundles only), ota_trial.py (boot_step
# and confirm: trial boots only). Qstrs are never freed: every name and short string these modules
# bring stays interned, and when the node's qstr pool is full the next one is allocated as one
# block of twice the last (640 entries, ~4.5 KB on a board) that a fragmented heap does not
# have: that, not the free heap, was the signal node's MemoryError at OTA_OFFER. Hence few
# module-level names, string literals for paths, and one ota_steps.py rather than a module per
# step (docs/PERFORMANCE.md "OTA: heap and qstrs per role").
import gc
import hashlib
import json
import os
import sys

from micropython import const

from . import cbor, proto
from .journal import write_atomic

_BAD_MAX = const(3)  # bad pieces in one transfer before it is refused as tampered
_EVERY = const(4)  # OTA_STATE at least every this many chunks
_T_OFFER = const(10)  # message types (proto.py leaves them unnamed, PROTOCOL.md 2.6)
_T_STATE = const(12)
_T_CHUNK = const(11)


def _rm(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _read(path, mode="r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        return None


def _boot():
    """ota/boot.json (otaboot.py's read, without importing the loader: ~1.4 KB held)."""
    try:
        b = json.loads(_read("ota/boot.json"))
        return b if isinstance(b, dict) else {}
    except (TypeError, ValueError):
        return {}


def _set_boot(b):
    write_atomic("ota/boot.json", json.dumps(b))  # otaboot.write's steps: tmp + rename


def _use(name):
    """A part of the OTA code (ota_steps, ota_trial, ota_fw), imported now (after a
    collection: its code in one piece if it can) or the one already loaded."""
    mod = sys.modules.get("roadside_node." + name)
    if mod is None:
        gc.collect()
        mod = __import__("roadside_node." + name, None, None, (name,))
    return mod


def _drop(name):
    """Forget a part imported by _use: its code is garbage at the next collection."""
    sys.modules.pop("roadside_node." + name, None)
    try:
        delattr(sys.modules["roadside_node"], name)  # the package's attribute set by the import
    except (KeyError, AttributeError):
        pass
    gc.collect()


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
        try:
            os.stat("ota/stage.json")
        except OSError:
            return
        try:  # a transfer staged before this boot: resumed at its last verified piece
            _use("ota_steps").load(self)
        finally:
            _drop("ota_steps")

    # -- staging ---------------------------------------------------------------------------
    def _save(self):
        self.st["have"] = self.start
        write_atomic("ota/stage.json", json.dumps(self.st))

    def drop(self, keep=False):
        """Forget the transfer held: its files go (the payload kept if keep)."""
        if self.f is not None:
            self.f.close()
            self.f = None
        for p in ("ota/stage.json", "ota/manifest.cbor", "ota/stage.bin")[:3 - keep]:
            _rm(p)
        self.st = {}
        self.m = {}
        self.tag = None
        self.have = self.start = self.piece = 0
        self.part = None

    def unload(self):
        """After a MemoryError (Session.failure): the payload file closed and the OTA code
        dropped from sys.modules; what is staged stays on flash for the next load."""
        if self.f is not None:
            self.f.close()
            self.f = None
        for name in ("ota_steps", "ota_fw", "ota_trial", "ota"):
            _drop(name)

    # -- messages ---------------------------------------------------------------------------
    def on_message(self, mtype, msg):
        if mtype != _T_CHUNK:  # an OTA_OFFER: its checks and refusals held for it only
            try:
                return _use("ota_steps").offer(self, msg)
            finally:
                _drop("ota_steps")
        t, at, data = msg.get(1), msg.get(2), msg.get(3)
        if not isinstance(t, bytes) or len(t) != 8:
            return self.error(mtype, (1, "an 8-byte tag"))
        if not proto._uint(at):
            return self.error(mtype, (2, "a uint offset"))
        if not isinstance(data, bytes) or not 0 < len(data) <= 512:
            return self.error(mtype, (3, "1 to 512 bytes of data"))
        self.chunk(t, at, data)

    def error(self, mtype, bad):
        """ERROR 2 for a message whose key bad[0] is not bad[1] (proto._need's words)."""
        text = "key %d must be %s" % bad
        self.s.errors_in += 1
        self.s.log("bad message: %s" % text)
        return self.s.send(proto.error(proto.E_MALFORMED, text, mtype))

    def refuse(self, tag, reason, text):
        self.refused = (tag, reason)
        self.s.log("ota: refused %s: %s" % (reason, text))
        self.send("refused", tag, 0, reason)

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
        if self.have == self.m[7]:  # read back from flash: staged or tampered
            return self.staged()
        if boundary:
            self._flush()
            self._save()
        if boundary or self.n >= _EVERY:
            self.state()

    def staged(self):
        """The whole payload held: read it back from flash against the manifest's digest.
        Here, not in ota_steps.py: no import at the end of a transfer, when the heap is in
        the smallest pieces."""
        self._flush()
        h = hashlib.sha256()
        buf = bytearray(512)
        size = self.m[7]
        at = 0
        part, f = self.part, self.f
        if f is not None:
            f.seek(0)
        while at < size:
            k = min(512, size - at)
            mv = memoryview(buf)[:k]
            if part is not None:
                _use("ota_fw").read(part, at, mv)
            elif f is not None:
                f.readinto(mv)
            h.update(mv)
            at += k
        st = self.st
        if h.digest() != self.m[8]:
            tag = self.tag
            self.drop()
            return self.refuse(tag, "tampered", "the staged payload does not match its sha256")
        st["staged"] = True
        self.start = size
        self._save()
        self.s.log("ota: staged %s %s" % (st["kind"], st["version"]))
        self.state()

    def _write(self, at, data):
        if self.part is not None:
            return _use("ota_fw").write(self.part, at, data)
        f = self.f
        if f is None:
            try:
                f = open("ota/stage.bin", "r+b")
            except OSError:
                f = open("ota/stage.bin", "wb")
            self.f = f
        f.seek(at)
        f.write(data)

    def _flush(self):
        if self.f is not None:
            self.f.flush()

    # -- state ------------------------------------------------------------------------------
    def send(self, state, tag, have, reason=None, version=None):
        self.n = 0
        w = cbor.Writer()
        w.map(3 + (tag is not None) + (reason is not None) + (version is not None))
        w.int(0)
        w.int(_T_STATE)
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
        trial = self.trial()
        if trial is not None:
            return self.send("trial", bytes.fromhex(trial["tag"]), trial.get("size", 0),
                             None, trial["version"])
        st = self.st
        if st:
            return self.send("staged" if st["staged"] else "receiving", self.tag, self.have,
                             None, self.s.fw)
        if self.refused is not None:
            return self.send("refused", self.refused[0], 0, self.refused[1], self.s.fw)
        b = _boot()
        r = b.get("report")
        if r:
            if not r.get("told"):  # once told, later boots need not load this module
                r["told"] = True
                _set_boot(b)
            return self.send(r["state"], bytes.fromhex(r["tag"]), 0, r.get("reason"),
                             r["version"] if r["state"] == "done" else self.s.fw)
        return self.send("idle", None, 0, None, self.s.fw)

    def command(self, name, args):
        if name == "ota.state":
            return self.state()
        if name == "ota.switch":
            return self.switch(args.get("tag"))
        raise proto.CommandError("unknown command %s; known: ota.switch, ota.state" % name)

    def switch(self, tag):
        """ota.switch: the trial written to ota/boot.json in one atomic step. An app is
        unpacked into its slot by the loader at the boot after it (otaboot.py: the heap is
        whole then); a firmware image is the bootloader's at the reset."""
        st = self.st
        if isinstance(tag, str):  # 16 hex digits: a JSON command API cannot carry bytes
            try:
                tag = bytes.fromhex(tag)
            except ValueError:
                tag = None
        if not st or not st["staged"] or tag != self.tag:
            raise proto.CommandError("ota.switch: no staged bundle with that tag (ota.state "
                                     "says what is held)")
        b = _boot()
        trial = {"tag": st["tag"], "version": st["version"], "kind": st["kind"],
                 "size": st["size"], "boots": 0, "slot": b.get("app")}
        app = st["kind"] == "app"
        if app:
            trial["slot"] = "b" if b.get("app") == "a" else "a"
            trial["unpack"] = 1
        elif self.part is not None:
            self.part.set_boot()  # the bootloader boots it at the reset, once
        b["trial"] = trial
        b.pop("report", None)
        self._flush()
        _set_boot(b)  # the switch: one atomic write
        self.drop(app)  # ota/stage.bin stays for the loader to unpack
        self.s.reboot_pending = True
        self.s.log("ota: switched to %s %s: reboot into the trial" % (st["kind"], st["version"]))
        return {"version": trial["version"], "slot": trial["slot"]}

    def boot_step(self, secs=None):
        """ota_trial.py's boot_step, held while bootguard's `ota` is set (dropped after)."""
        r = _use("ota_trial").boot_step(self, secs)
        if r or self.s.guard.ota is None:
            _drop("ota_trial")
        return r

    def confirm(self):
        _use("ota_trial").confirm(self)

    def trial(self):
        """The update on trial this boot (bootguard's `ota`, ota/boot.json at boot), or None."""
        g = self.s.guard
        return g.ota.get("trial") if g is not None and g.ota else None

