# A boot with an update's trial or outcome to tell (App.step while bootguard's `ota` is set),
# for ota.py: imported on that boot's first step, dropped once the trial is confirmed or
# rolled back (or the outcome told).
from micropython import const

from .ota import _boot, _set_boot, _use

_TRIAL_S = const(120)  # a trial boot without a healthy session for this long is rolled back
_TRIAL_IDLE_S = const(30)  # a session up this long with nothing to send is healthy too
# this boot's: the trial / outcome told after HELLO, seconds since boot when the session was
# first up, ticks_ms at the first step (a trial is bounded in real seconds), the journal's
# first unacked then (records acked since: the trial is healthy). Module state: held while
# this module is (bootguard's `ota` set), and on no other boot.
told = False
up_at = -1
boot_ms = None
unacked0 = 0


def boot_step(o, secs):
    """Tell the gateway the trial or the last outcome once the session is up; confirm a
    trial once the session is healthy (HELLO answered and records acked, or TRIAL_IDLE_S
    up with nothing to send). True: the trial failed (no healthy session in TRIAL_S
    seconds since boot) and was rolled back: reset now."""
    global told, up_at, boot_ms, unacked0
    s = o.s
    g = s.guard
    if boot_ms is None:  # the first step of this boot
        unacked0 = s.journal.first_unacked
        boot_ms = s.hw.ticks_ms() if secs is None else 0
    if secs is None:  # seconds since then
        secs = s.hw.ticks_diff(s.hw.ticks_ms(), boot_ms) // 1000
    if s.up and not told:
        told = True
        o.state()
    if o.trial() is None:
        if told:
            g.ota = None
        return False
    if s.up and up_at < 0:
        up_at = secs
    idle = s.journal.first_unacked == s.journal.next_seq
    acked = s.journal.first_unacked > unacked0
    if s.up and (acked or idle and secs - up_at >= _TRIAL_IDLE_S):
        confirm(o)
        g.ota = None
        return False
    if secs < _TRIAL_S:
        return False
    import otaboot
    otaboot.rollback("no_session")
    s.log("ota: trial without a healthy session in %d s: rolled back" % _TRIAL_S)
    return True


def confirm(o):
    """The trial boot reached a healthy session: it becomes the app."""
    b = _boot()
    t = b.pop("trial", None)
    if t is None:
        return
    if t["kind"] == "firmware":
        _use("ota_fw").confirm()
    else:
        b["app"] = t["slot"]
    b["report"] = {"state": "done", "tag": t["tag"], "version": t["version"], "told": True}
    _set_boot(b)
    o.s.log("ota: trial of %s confirmed" % t["version"])
    o.send("done", bytes.fromhex(t["tag"]), t.get("size", 0), None, t["version"])
