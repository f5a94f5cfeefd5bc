# The OTA steps taken once per transfer (PROTOCOL.md 2.6), for ota.py: an OTA_OFFER's checks,
# refusals and staging, and the resume of a transfer staged before a reboot. Imported for the
# step and dropped from sys.modules after it (ota.py's _use/_drop): none of it is held while
# the chunks flow. The read-back and ota.switch are ota.py's (no import at the end of a
# transfer, when the heap is in pieces); the loader (otaboot.py) unpacks an app at the boot
# after the switch. One module, not one per step: every module costs qstrs (its names, its
# file) that a node never frees, and a node whose qstr pool must grow then needs one big block
# (ota.py's header).
import gc
import hashlib
import json
import os
import sys

from . import cbor, proto
from .ota import _boot, _read, _set_boot, _use


def load(o):
    """The transfer staged before this boot (ota/stage.json, ota/manifest.cbor) into o."""
    st = _read("ota/stage.json")
    mb = _read("ota/manifest.cbor", "rb")
    if st is None or mb is None:
        return
    try:
        st = json.loads(st)
        m = cbor.loads(mb)
        o.m = {1: m[1], 5: m[5], 7: m[7], 8: m[8]}
        o.tag = bytes.fromhex(st["tag"])
        o.st = st
        have = int(st["have"])  # a piece boundary (pieces before it verified)
        at = i = 0
        for size, _ in o.m[5]:
            if at >= have:
                break
            at += size
            i += 1
        o.have = o.start = at
        o.piece = i
        o.h = hashlib.sha256()
        if st["kind"] == "firmware":
            o.part = _use("ota_fw").partition()
    except Exception:  # noqa: BLE001 - damaged staging: start afresh
        o.s.log("ota: staging unreadable, dropped")
        o.drop()


def offer(o, msg):
    kind, mb, mac, force = msg.get(1), msg.get(2), msg.get(3), msg.get(4) is True
    if kind not in ("app", "firmware"):
        return o.error(10, (1, "app or firmware"))
    if not isinstance(mb, bytes):
        return o.error(10, (2, "the manifest bytes"))
    if not isinstance(mac, bytes) or len(mac) != 32:
        return o.error(10, (3, "a 32-byte mac"))
    s = o.s
    tag = hashlib.sha256(mb).digest()[:8]
    key = _read("ota.key", "rb")
    if key is None or len(key) != 32:
        return o.refuse(tag, "signature", "no ota key on this node (provision it: "
                                          "roadside config ota-key)")
    # HMAC-SHA256(key, manifest) == mac, compared in constant time. A 32-byte key needs no
    # hashing (RFC 2104): here rather than auth.py's, whose BLE handshake does not fit the heap
    # left beside this module on a node without BLE. Inline: each function name is a qstr.
    pad = key + bytes(32)
    h = hashlib.sha256(bytes(b ^ 0x36 for b in pad))
    h.update(mb)  # not pad + mb: no copy of the manifest (the offer is a BLE node's lowest)
    inner = h.digest()
    got = hashlib.sha256(bytes(b ^ 0x5C for b in pad) + inner).digest()
    r = len(got) ^ len(mac)
    for a, b in zip(got, mac):
        r |= a ^ b
    del key, pad, inner, h
    if r:
        return o.refuse(tag, "signature", "mac does not match the ota key")
    if o.st and tag == o.tag:  # the same bundle: resume
        o.refused = None
        if not o.st["staged"] and o.have == o.m[7]:
            return o.staged()  # all held, the read-back not done (it ran out of memory)
        return o.state()
    if o.trial() is not None:
        return o.refuse(tag, "busy", "an update is on trial")
    m = cbor.loads(mb)
    c = s.config
    if m.get(4) != proto.PROTOCOL_VERSION:
        return o.refuse(tag, "protocol", "protocol %s" % m.get(4))
    if c.get("board") not in (m.get(2) or ()):
        return o.refuse(tag, "board", "bundle for boards %s" % (m.get(2),))
    if c.get("role") not in (m.get(3) or ()):
        return o.refuse(tag, "role", "bundle for roles %s" % (m.get(3),))
    vs = []  # type: list  # "1.4.0" -> (1, 4, 0); None when it is not dotted numbers
    for text in (m.get(1), s.fw):
        try:
            vs.append(tuple(int(p) for p in text.split(".")))
        except (ValueError, AttributeError):
            vs.append(None)
    new, running = vs
    if kind != "app":
        running = tuple(sys.implementation.version[:3])
    if new is None or (not force and running is not None and new <= running):
        return o.refuse(tag, "version", "%s, running %s" % (m.get(1), running))
    if kind == "firmware" and _use("ota_fw").partition() is None:
        return o.refuse(tag, "board", "no OTA partition for a firmware image")
    if s.prio_seq >= s.journal.first_unacked:
        return o.refuse(tag, "busy", "priority records not yet acked")
    # the role in alarm (ble.py's status flag): an alarm burst goes first; the gateway offers
    # again after ota.retry_s. force overrides it (a reader fault the update fixes), not the
    # unacked PRIORITY records above. "state" is interned already; "ok" and "normal" may be
    # new qstrs on a signal node (docs/PERFORMANCE.md: its margin); the long text is not.
    if not force and getattr(s.role, "state", None) not in (None, 0, "ok", "normal"):
        return o.refuse(tag, "busy", "the role is in alarm (state %s)" % (s.role.state,))
    o.drop()  # another bundle's staging (or none) goes
    st = os.statvfs("/")
    free = st[0] * st[4]
    if m.get(10, 0) > free:
        return o.refuse(tag, "space", "needs %d bytes of flash, %d free" % (m.get(10, 0), free))
    try:
        os.mkdir("ota")  # from now on the loader (otaboot.py) runs at every boot
    except OSError:
        pass  # it exists
    with open("ota/manifest.cbor", "wb") as f:
        f.write(mb)
    o.m = {1: m[1], 5: m[5], 7: m[7], 8: m[8]}  # what the transfer and the switch use
    o.tag = tag
    o.st = {"tag": tag.hex(), "kind": kind, "have": 0, "bad": 0, "staged": False,
            "version": m[1], "size": m[7]}
    o.have = o.start = o.piece = 0
    o.h = hashlib.sha256()
    if kind == "firmware":
        o.part = _use("ota_fw").partition()
    m = mb = mac = msg = None  # the whole manifest, its bytes, the HMAC's temporaries: garbage
    gc.collect()  # before the files are opened (a BLE node's heap is at its lowest here)
    o._save()
    o.refused = None
    o.s.log("ota: receiving %s %s (%d bytes)" % (kind, o.st["version"], o.st["size"]))
    b = _boot()  # the last outcome is reported until a new transfer: forgotten now
    if b.pop("report", None) is not None:
        _set_boot(b)
    o.state()
